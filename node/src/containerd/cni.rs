//! Pod networking for container pods through the standard CNI plugins
//! (bridge, host-local, loopback), run the standard way: the plugin binary
//! with `CNI_*` variables and the network config on stdin. See
//! docs/networking.md for the data path.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("{plugin}: {message}")]
    Plugin { plugin: String, message: String },
    #[error("network namespace {name}: {message}")]
    Netns { name: String, message: String },
    #[error("CNI result has no IPv4 address: {0}")]
    NoAddress(String),
}

/// The node's container network: one bridge, one subnet.
#[derive(Debug, Clone)]
pub struct Cni {
    plugin_dir: PathBuf,
    conf: Value,
}

/// The network namespace of pod `uid`, as `ip netns` names it.
pub fn netns_name(uid: &str) -> String {
    format!("weft-{uid}")
}

pub fn netns_path(uid: &str) -> PathBuf {
    Path::new("/run/netns").join(netns_name(uid))
}

/// The conflist: a bridge acting as the pods' gateway (their default
/// route, so Services and other hosts' pods are reached through the host),
/// host-local IPAM over `subnet` (its state under `ipam_dir`), then loopback.
pub fn conflist(bridge: &str, subnet: &str, ipam_dir: &Path) -> Value {
    json!({
        "cniVersion": "0.4.0",
        "name": format!("weft-{bridge}"),
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
             "hairpinMode": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": ipam_dir}},
            {"type": "loopback"}
        ]
    })
}

/// The first IPv4 address of a CNI result (0.4.0 `ips[].address`, `a.b.c.d/len`).
pub fn result_ip(result: &Value) -> Option<Ipv4Addr> {
    result["ips"]
        .as_array()?
        .iter()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .next()
}

impl Cni {
    pub fn new(plugin_dir: PathBuf, bridge: &str, subnet: &str, ipam_dir: &Path) -> Cni {
        Cni {
            plugin_dir,
            conf: conflist(bridge, subnet, ipam_dir),
        }
    }

    /// Moves new pods to `subnet` (a routed node learns its block only after
    /// it registered), with the bridge and their links at `mtu` if given.
    pub fn set_subnet(&mut self, subnet: &str, mtu: Option<u32>) {
        self.conf["plugins"][0]["ipam"]["ranges"] = json!([[{"subnet": subnet}]]);
        if let Some(mtu) = mtu {
            self.conf["plugins"][0]["mtu"] = json!(mtu);
        }
    }

    /// Whether the plugins this network needs are installed.
    pub fn available(&self) -> bool {
        self.plugins().iter().all(|p| {
            self.plugin_dir
                .join(p["type"].as_str().unwrap_or(""))
                .exists()
        })
    }

    fn plugins(&self) -> Vec<Value> {
        self.conf["plugins"].as_array().cloned().unwrap_or_default()
    }

    /// One plugin call; its stdout is the result.
    async fn exec(
        &self,
        command: &str,
        uid: &str,
        plugin: &Value,
        prev: Option<&Value>,
    ) -> Result<Value, CniError> {
        let ty = plugin["type"].as_str().unwrap_or_default().to_string();
        let mut conf = plugin.clone();
        conf["cniVersion"] = self.conf["cniVersion"].clone();
        conf["name"] = self.conf["name"].clone();
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        let err = |message: String| CniError::Plugin {
            plugin: ty.clone(),
            message,
        };
        let mut child = tokio::process::Command::new(self.plugin_dir.join(&ty))
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", uid)
            .env("CNI_NETNS", netns_path(uid))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.plugin_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| err(e.to_string()))?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(conf.to_string().as_bytes())
            .await
            .map_err(|e| err(e.to_string()))?;
        drop(stdin);
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| err(e.to_string()))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            // Plugins report errors as JSON `{"code", "msg"}` on stdout.
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["msg"].as_str().map(String::from))
                .unwrap_or_else(|| format!("{text}{}", String::from_utf8_lossy(&out.stderr)));
            return Err(err(msg));
        }
        if text.trim().is_empty() {
            return Ok(prev.cloned().unwrap_or(Value::Null));
        }
        serde_json::from_str(&text).map_err(|e| err(format!("bad result: {e}")))
    }
}

/// A pod's network as the container runtime needs it: a namespace per pod,
/// attached and detached (CNI here, a fake in unit tests).
pub trait PodNetwork: Send + Sync + 'static {
    /// Whether pod `uid` has its namespace.
    fn exists(&self, uid: &str) -> bool;

    /// Creates the pod's namespace and attaches it; returns the pod's IP.
    fn add(&self, uid: &str) -> impl Future<Output = Result<Ipv4Addr, CniError>> + Send;

    /// Detaches and removes the pod's namespace, best effort.
    fn del(&self, uid: &str) -> impl Future<Output = ()> + Send;
}

impl PodNetwork for Cni {
    fn exists(&self, uid: &str) -> bool {
        netns_path(uid).exists()
    }

    async fn add(&self, uid: &str) -> Result<Ipv4Addr, CniError> {
        if !self.exists(uid) {
            ip_netns(&["add", &netns_name(uid)]).await?;
        }
        let mut result: Option<Value> = None;
        for p in self.plugins() {
            let r = self.exec("ADD", uid, &p, result.as_ref()).await;
            match r {
                Ok(r) => result = Some(r),
                Err(e) => {
                    self.del(uid).await;
                    return Err(e);
                }
            }
        }
        let result = result.unwrap_or(Value::Null);
        result_ip(&result).ok_or_else(|| CniError::NoAddress(result.to_string()))
    }

    // Best effort: DEL must tolerate what is already gone, and a failure
    // here leaks only an address.
    async fn del(&self, uid: &str) {
        for p in self.plugins().iter().rev() {
            if let Err(e) = self.exec("DEL", uid, p, None).await {
                tracing::warn!(pod = uid, "CNI DEL: {e}");
            }
        }
        if self.exists(uid)
            && let Err(e) = ip_netns(&["delete", &netns_name(uid)]).await
        {
            tracing::warn!(pod = uid, "{e}");
        }
    }
}

/// `ip netns add|delete NAME`: iproute2 creates and bind-mounts the
/// namespace, which needs no unsafe code here.
async fn ip_netns(args: &[&str]) -> Result<(), CniError> {
    let out = tokio::process::Command::new("ip")
        .arg("netns")
        .args(args)
        .output()
        .await
        .map_err(|e| CniError::Netns {
            name: args.last().copied().unwrap_or_default().into(),
            message: format!("running ip: {e}"),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CniError::Netns {
            name: args.last().copied().unwrap_or_default().into(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_and_result() {
        let c = conflist("weft0", "10.88.0.0/24", Path::new("/d/ipam"));
        assert_eq!(
            c["plugins"][0]["ipam"]["routes"][0]["dst"], "0.0.0.0/0",
            "pods route through the bridge"
        );
        assert_eq!(c["plugins"][0]["type"], "bridge");
        assert_eq!(c["plugins"][0]["bridge"], "weft0");
        assert_eq!(
            c["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.88.0.0/24"
        );
        assert_eq!(c["plugins"][1]["type"], "loopback");
        let r = json!({"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.88.0.5/24", "gateway": "10.88.0.1"}]});
        assert_eq!(result_ip(&r), Some(Ipv4Addr::new(10, 88, 0, 5)));
        assert_eq!(result_ip(&json!({})), None);
        let mut cni = Cni::new("/p".into(), "weft0", "10.88.0.0/16", Path::new("/d"));
        cni.set_subnet("10.244.1.0/25", Some(1450));
        assert_eq!(cni.conf["plugins"][0]["mtu"], 1450);
        assert_eq!(
            cni.conf["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.1.0/25"
        );
        assert_eq!(netns_path("u1"), Path::new("/run/netns/weft-u1"));
    }
}
