//! The OCI runtime spec of one container, built from the pod and the image
//! config the way kubelet and containerd's CRI build it. Pure: no I/O.

use std::collections::HashSet;
use std::path::PathBuf;
use std::str::FromStr;

use oci_spec::image::Config as ImageConfig;
use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxCpu, LinuxDeviceCgroup, LinuxMemory, LinuxNamespace,
    LinuxNamespaceType, LinuxResources, Mount, Process, Spec, User,
};
use weft_api::k8s_openapi::api::core::v1::{Container, Pod};
use weft_wasm_host::Preopen;

/// containerd's CRI default capabilities (Docker's set).
const DEFAULT_CAPS: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// The CFS period kubelet uses; `limits.cpu` becomes a quota of it.
const CPU_PERIOD: u64 = 100_000;

/// What the spec is built from besides the pod.
pub struct Inputs<'a> {
    pub image: Option<&'a ImageConfig>,
    /// The container's resolved environment.
    pub env: &'a [(String, String)],
    /// Volume mounts, resolved to host directories.
    pub volumes: &'a [Preopen],
    /// The pod's network namespace, shared by its containers.
    pub netns: PathBuf,
    pub cgroups_path: String,
    pub allow_privileged: bool,
    /// Mounted at /etc/resolv.conf ([`super::resolv`]).
    pub resolv_conf: Option<PathBuf>,
}

/// Why a spec could not be built (`CreateContainerConfigError`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

/// argv as Kubernetes defines it: `command` replaces the image's
/// ENTRYPOINT (and then its CMD is ignored); `args` replaces CMD.
pub fn argv(c: &Container, image: Option<&ImageConfig>) -> Vec<String> {
    let entrypoint = image
        .and_then(|i| i.entrypoint().clone())
        .unwrap_or_default();
    let cmd = image.and_then(|i| i.cmd().clone()).unwrap_or_default();
    match (&c.command, &c.args) {
        (Some(command), args) => command
            .iter()
            .chain(args.iter().flatten())
            .cloned()
            .collect(),
        (None, Some(args)) => entrypoint.into_iter().chain(args.iter().cloned()).collect(),
        (None, None) => entrypoint.into_iter().chain(cmd).collect(),
    }
}

/// The image's environment, overridden by the container's.
fn environment(image: Option<&ImageConfig>, env: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<(String, String)> = image
        .and_then(|i| i.env().clone())
        .unwrap_or_default()
        .into_iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv, String::new()),
        })
        .collect();
    if !out.iter().any(|(k, _)| k == "PATH") {
        out.insert(
            0,
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
        );
    }
    for (k, v) in env {
        match out.iter_mut().find(|(ek, _)| ek == k) {
            Some(slot) => slot.1 = v.clone(),
            None => out.push((k.clone(), v.clone())),
        }
    }
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// uid and gid: the securityContext's (container over pod), else the
/// image's numeric `USER` (`uid` or `uid:gid`). Named users would need the
/// image's /etc/passwd; they are refused rather than run as root.
fn user(pod: &Pod, c: &Container, image: Option<&ImageConfig>) -> Result<(u32, u32), SpecError> {
    let sc = c.security_context.as_ref();
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let (mut uid, mut gid) = (0u32, 0u32);
    if let Some(u) = image
        .and_then(|i| i.user().clone())
        .filter(|u| !u.is_empty())
    {
        let (u, g) = u.split_once(':').unwrap_or((&u, ""));
        uid = u.parse().map_err(|_| {
            SpecError(format!(
                "image user {u:?} is not numeric: set securityContext.runAsUser"
            ))
        })?;
        if !g.is_empty() {
            gid = g
                .parse()
                .map_err(|_| SpecError(format!("image group {g:?} is not numeric")))?;
        }
    }
    if let Some(u) = sc
        .and_then(|s| s.run_as_user)
        .or(psc.and_then(|s| s.run_as_user))
    {
        uid = u32::try_from(u).map_err(|_| SpecError(format!("runAsUser {u} is invalid")))?;
    }
    if let Some(g) = sc
        .and_then(|s| s.run_as_group)
        .or(psc.and_then(|s| s.run_as_group))
    {
        gid = u32::try_from(g).map_err(|_| SpecError(format!("runAsGroup {g} is invalid")))?;
    }
    let non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or(psc.and_then(|s| s.run_as_non_root));
    if non_root == Some(true) && uid == 0 {
        return Err(SpecError(
            "container has runAsNonRoot and image will run as root".into(),
        ));
    }
    Ok((uid, gid))
}

fn capability(name: &str) -> Result<Capability, SpecError> {
    let name = name.strip_prefix("CAP_").unwrap_or(name);
    Capability::from_str(name).map_err(|_| SpecError(format!("unknown capability {name:?}")))
}

/// The default set, minus `drop` (`ALL` drops every one), plus `add`.
fn capabilities(c: &Container, privileged: bool) -> Result<HashSet<Capability>, SpecError> {
    if privileged {
        return Ok(all_capabilities());
    }
    let caps = c
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref());
    let mut set: HashSet<Capability> = DEFAULT_CAPS.iter().copied().collect();
    for d in caps.and_then(|c| c.drop.as_ref()).into_iter().flatten() {
        if d == "ALL" {
            set.clear();
        } else {
            set.remove(&capability(d)?);
        }
    }
    for a in caps.and_then(|c| c.add.as_ref()).into_iter().flatten() {
        if a == "ALL" {
            set = all_capabilities();
        } else {
            set.insert(capability(a)?);
        }
    }
    Ok(set)
}

fn all_capabilities() -> HashSet<Capability> {
    // Every capability the kernel had by 5.9, by name.
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE \
     NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO \
     SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME \
     SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG \
     WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF CHECKPOINT_RESTORE"
        .split_whitespace()
        .filter_map(|n| Capability::from_str(n).ok())
        .collect()
}

fn quantity(c: &Container, which: &str, name: &str) -> Option<String> {
    let r = c.resources.as_ref()?;
    let map = if which == "limits" {
        r.limits.as_ref()
    } else {
        r.requests.as_ref()
    }?;
    map.get(name).map(|q| q.0.clone())
}

/// The spec for container `c` of `pod`.
pub fn build(pod: &Pod, c: &Container, inputs: &Inputs) -> Result<Spec, SpecError> {
    let image = inputs.image;
    let sc = c.security_context.as_ref();
    let privileged = sc.and_then(|s| s.privileged).unwrap_or(false);
    if privileged && !inputs.allow_privileged {
        return Err(SpecError(
            "privileged containers are not allowed on this node (--allow-privileged)".into(),
        ));
    }
    let args = argv(c, image);
    if args.is_empty() {
        return Err(SpecError(
            "no command specified: the image has no ENTRYPOINT or CMD".into(),
        ));
    }
    let mut spec = Spec::default();
    spec.set_hostname(pod.metadata.name.clone());

    let base = spec.process().clone().unwrap_or_default();
    let process = process(pod, c, inputs, privileged, args, base)?;
    spec.set_process(Some(process));

    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path("rootfs".into());
    root.set_readonly(Some(
        sc.and_then(|s| s.read_only_root_filesystem)
            .unwrap_or(false),
    ));
    spec.set_root(Some(root));

    let mut mounts = spec.mounts().clone().unwrap_or_default();
    if privileged {
        // Privileged containers see the host's sysfs and cgroups read-write.
        for m in mounts.iter_mut() {
            if let Some(opts) = m.options().clone() {
                m.set_options(Some(opts.into_iter().filter(|o| o != "ro").collect()));
            }
        }
    }
    for v in inputs.volumes {
        let mut m = Mount::default();
        m.set_destination(PathBuf::from(&v.guest));
        m.set_typ(Some("bind".into()));
        m.set_source(Some(v.host.clone()));
        let mut opts = vec!["rbind".to_string(), "rprivate".into()];
        opts.push(if v.read_only { "ro" } else { "rw" }.into());
        m.set_options(Some(opts));
        mounts.push(m);
    }
    if let Some(path) = &inputs.resolv_conf {
        let mut m = Mount::default();
        m.set_destination(PathBuf::from("/etc/resolv.conf"));
        m.set_typ(Some("bind".into()));
        m.set_source(Some(path.clone()));
        m.set_options(Some(vec!["bind".into(), "rprivate".into(), "rw".into()]));
        mounts.push(m);
    }
    spec.set_mounts(Some(mounts));

    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    namespaces.retain(|n| {
        !matches!(
            n.typ(),
            LinuxNamespaceType::Network
                | LinuxNamespaceType::User
                | LinuxNamespaceType::Cgroup
                | LinuxNamespaceType::Time
        )
    });
    let mut net = LinuxNamespace::default();
    net.set_typ(LinuxNamespaceType::Network);
    net.set_path(Some(inputs.netns.clone()));
    namespaces.push(net);
    linux.set_namespaces(Some(namespaces));
    linux.set_cgroups_path(Some(inputs.cgroups_path.clone().into()));
    if privileged {
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
    }
    let resources = resources(c, privileged, linux.resources().clone().unwrap_or_default());
    linux.set_resources(Some(resources));
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// The container's process: argv, env, cwd, user, capabilities.
fn process(
    pod: &Pod,
    c: &Container,
    inputs: &Inputs,
    privileged: bool,
    args: Vec<String>,
    mut process: Process,
) -> Result<Process, SpecError> {
    let (image, sc) = (inputs.image, c.security_context.as_ref());
    process.set_args(Some(args));
    process.set_env(Some(environment(image, inputs.env)));
    let cwd = c
        .working_dir
        .clone()
        .or_else(|| image.and_then(|i| i.working_dir().clone()))
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    process.set_cwd(cwd.into());
    let (uid, gid) = user(pod, c, image)?;
    let mut u = User::default();
    u.set_uid(uid);
    u.set_gid(gid);
    if let Some(groups) = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|s| s.supplemental_groups.as_ref())
    {
        u.set_additional_gids(Some(groups.iter().map(|g| *g as u32).collect()));
    }
    process.set_user(u);
    let caps = capabilities(c, privileged)?;
    let mut lc = LinuxCapabilities::default();
    lc.set_bounding(Some(caps.clone()));
    lc.set_effective(Some(caps.clone()));
    lc.set_permitted(Some(caps));
    lc.set_inheritable(Some(HashSet::new()));
    lc.set_ambient(Some(HashSet::new()));
    process.set_capabilities(Some(lc));
    let no_new_privs = !privileged && sc.and_then(|s| s.allow_privilege_escalation) != Some(true);
    process.set_no_new_privileges(Some(no_new_privs));
    Ok(process)
}

/// Devices, memory and CPU from the container's resources.
fn resources(c: &Container, privileged: bool, mut resources: LinuxResources) -> LinuxResources {
    // Deny every device, then runc allows its defaults (null, zero, tty, ...).
    let mut deny = LinuxDeviceCgroup::default();
    deny.set_allow(privileged);
    deny.set_access(Some("rwm".into()));
    resources.set_devices(Some(vec![deny]));
    if let Some(bytes) =
        quantity(c, "limits", "memory").and_then(|q| weft_api::quantity::parse_units(&q))
    {
        let mut mem = LinuxMemory::default();
        mem.set_limit(Some(i64::try_from(bytes).unwrap_or(i64::MAX)));
        // No swap beyond the limit, so a breach is an OOM kill as in Kubernetes.
        mem.set_swap(Some(i64::try_from(bytes).unwrap_or(i64::MAX)));
        resources.set_memory(Some(mem));
    }
    let mut cpu = LinuxCpu::default();
    if let Some(milli) =
        quantity(c, "limits", "cpu").and_then(|q| weft_api::quantity::parse_milli(&q))
        && milli > 0
    {
        cpu.set_period(Some(CPU_PERIOD));
        cpu.set_quota(Some((milli as i64 * CPU_PERIOD as i64 / 1000).max(1000)));
    }
    if let Some(milli) =
        quantity(c, "requests", "cpu").and_then(|q| weft_api::quantity::parse_milli(&q))
    {
        // kubelet's MilliCPUToShares: 1024 shares per core, at least 2.
        cpu.set_shares(Some(((milli as u64) * 1024 / 1000).max(2)));
    }
    resources.set_cpu(Some(cpu));
    resources
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(v: serde_json::Value) -> Container {
        serde_json::from_value(v).unwrap()
    }

    fn image(v: serde_json::Value) -> ImageConfig {
        serde_json::from_value(v).unwrap()
    }

    fn inputs<'a>(image: Option<&'a ImageConfig>, env: &'a [(String, String)]) -> Inputs<'a> {
        Inputs {
            image,
            env,
            volumes: &[],
            netns: "/run/netns/weft-x".into(),
            cgroups_path: "/weft/x".into(),
            allow_privileged: false,
            resolv_conf: None,
        }
    }

    #[test]
    fn argv_follows_kubernetes_rules() {
        let img = image(json!({"Entrypoint": ["/ep"], "Cmd": ["cmd1"]}));
        let c = |v| container(v);
        assert_eq!(argv(&c(json!({"name": "a"})), Some(&img)), ["/ep", "cmd1"]);
        assert_eq!(
            argv(&c(json!({"name": "a", "args": ["x"]})), Some(&img)),
            ["/ep", "x"]
        );
        assert_eq!(
            argv(&c(json!({"name": "a", "command": ["/bin/sh"]})), Some(&img)),
            ["/bin/sh"],
            "command drops the image's CMD"
        );
        assert_eq!(
            argv(
                &c(json!({"name": "a", "command": ["/bin/sh"], "args": ["-c", "true"]})),
                Some(&img)
            ),
            ["/bin/sh", "-c", "true"]
        );
    }

    #[test]
    fn spec_from_pod() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "web"},
            "spec": {"securityContext": {"runAsUser": 1000}, "containers": []}}))
        .unwrap();
        let c = container(json!({"name": "a", "workingDir": "/srv",
            "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}, "requests": {"cpu": "250m"}},
            "securityContext": {"readOnlyRootFilesystem": true, "runAsGroup": 7,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}));
        let img =
            image(json!({"Cmd": ["/bin/httpd"], "Env": ["PATH=/bin", "A=image"], "User": "5"}));
        let env = vec![("A".to_string(), "pod".to_string())];
        let spec = build(&pod, &c, &inputs(Some(&img), &env)).unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["hostname"], "web");
        assert_eq!(v["process"]["args"], json!(["/bin/httpd"]));
        assert_eq!(v["process"]["env"], json!(["PATH=/bin", "A=pod"]));
        assert_eq!(v["process"]["cwd"], "/srv");
        assert_eq!(
            v["process"]["user"]["uid"], 1000,
            "pod runAsUser beats the image"
        );
        assert_eq!(v["process"]["user"]["gid"], 7);
        assert_eq!(
            v["process"]["capabilities"]["bounding"],
            json!(["CAP_NET_BIND_SERVICE"])
        );
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["linux"]["resources"]["cpu"]["shares"], 256);
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.contains(&json!({"type": "network", "path": "/run/netns/weft-x"})));
    }

    #[test]
    fn refusals() {
        let pod = Pod::default();
        let env = [];
        let privileged = container(
            json!({"name": "a", "command": ["x"], "securityContext": {"privileged": true}}),
        );
        let e = build(&pod, &privileged, &inputs(None, &env)).unwrap_err();
        assert!(e.0.contains("privileged"), "{e}");
        let mut allowed = inputs(None, &env);
        allowed.allow_privileged = true;
        assert!(build(&pod, &privileged, &allowed).is_ok());
        let none = container(json!({"name": "a"}));
        assert!(build(&pod, &none, &inputs(None, &env)).is_err());
        let named = image(json!({"Cmd": ["x"], "User": "nobody"}));
        assert!(build(&pod, &none, &inputs(Some(&named), &env)).is_err());
        let nonroot = container(
            json!({"name": "a", "command": ["x"], "securityContext": {"runAsNonRoot": true}}),
        );
        assert!(build(&pod, &nonroot, &inputs(None, &env)).is_err());
        let bad_cap = container(
            json!({"name": "a", "command": ["x"], "securityContext": {"capabilities": {"add": ["FLY"]}}}),
        );
        assert!(build(&pod, &bad_cap, &inputs(None, &env)).is_err());
    }
}
