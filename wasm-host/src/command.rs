//! Run-to-completion guests: wasi:cli command components and wasip1 core
//! modules (Jobs, and long-running workers under a restartPolicy).

use wasmtime::{Engine, InstancePre, Store, StoreLimits};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;

use crate::guest::{self, Cpu, Guest, GuestState};
use crate::{HostError, Limits};

/// How a command run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// `run` returned or the guest called exit: the code (0 is success).
    Code(i32),
    /// A memory limit was hit (the OOMKilled of Wasm).
    OutOfMemory(String),
    /// Any other trap.
    Trap(String),
}

/// The store state of a wasip1 module.
pub struct P1State {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
    _alive: guest::Alive,
}

pub(crate) fn add_p1_to_linker(linker: &mut wasmtime::Linker<P1State>) -> Result<(), HostError> {
    wasmtime_wasi::p1::add_to_linker_async(linker, |s: &mut P1State| &mut s.wasi)
        .map_err(|e| HostError::Config(format!("{e:#}")))
}

#[derive(Clone)]
pub(crate) enum Program {
    Component(CommandPre<GuestState>),
    Module(InstancePre<P1State>),
}

/// A command: each `run` is one fresh instance, run to completion.
#[derive(Clone)]
pub struct Command {
    pub(crate) program: Program,
    pub(crate) engine: Engine,
    pub(crate) activity: std::sync::Arc<guest::Activity>,
    pub(crate) guest: Guest,
    pub(crate) limits: Limits,
}

impl Command {
    /// Runs once, output into the guest's log sink. The guest yields at every
    /// epoch tick (throttled to `limits.cpu_cores`), so dropping the future
    /// stops even a busy loop.
    pub async fn run(&self) -> Exit {
        let cpu = || Cpu {
            budget: None,
            cores: self.limits.cpu_cores,
        };
        let outcome = match &self.program {
            Program::Component(pre) => {
                let mut store =
                    match guest::new_store(&self.engine, &self.activity, &self.guest, &self.limits)
                    {
                        Ok(s) => s,
                        Err(e) => return Exit::Trap(e),
                    };
                guest::arm_cpu(&mut store, cpu());
                async {
                    let cmd = pre.instantiate_async(&mut store).await?;
                    cmd.wasi_cli_run().call_run(&mut store).await
                }
                .await
                .map(|r| if r.is_ok() { 0 } else { 1 })
            }
            Program::Module(pre) => {
                let wasi = match self.guest.wasi() {
                    Ok(mut w) => w.build_p1(),
                    Err(e) => return Exit::Trap(e),
                };
                let state = P1State {
                    wasi,
                    limits: guest::store_limits(&self.limits),
                    _alive: self.activity.enter(),
                };
                let mut store = Store::new(&self.engine, state);
                store.limiter(|s| &mut s.limits);
                guest::arm_cpu(&mut store, cpu());
                async {
                    let instance = pre.instantiate_async(&mut store).await?;
                    let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                    start.call_async(&mut store, ()).await
                }
                .await
                .map(|()| 0)
            }
        };
        match outcome {
            Ok(code) => Exit::Code(code),
            Err(e) => match e.downcast_ref::<I32Exit>() {
                Some(code) => Exit::Code(code.0),
                None => {
                    let text = format!("{e:#}");
                    if guest::hit_memory_limit(&text) {
                        Exit::OutOfMemory(text)
                    } else {
                        Exit::Trap(text)
                    }
                }
            },
        }
    }
}
