//! The host side of a routed node's pod network (`--pod-network routed`).
//! A Wasm pod is a set of sockets in the agent, not an interface: its IP
//! is made an address of this host by one `local` route over the node's
//! podCIDR (the kernel then delivers every address of the block here, as
//! it does 127.0.0.0/8), so the agent binds each pod's IP without an
//! interface per pod, and a peer that routes the block to this host
//! reaches every pod in it. Needs CAP_NET_ADMIN; loopback mode needs none.

#[derive(Debug, thiserror::Error)]
#[error("making the pod network {cidr} local to this host (ip route {verb}): {message}")]
pub struct PodNetError {
    cidr: String,
    verb: &'static str,
    message: String,
}

/// `ip route replace local CIDR dev lo`: idempotent, so a restarted agent
/// finds its route as it left it.
pub async fn make_local(cidr: &str) -> Result<(), PodNetError> {
    ip_route("replace", cidr).await
}

/// Removes the route [`make_local`] added.
pub async fn remove_local(cidr: &str) -> Result<(), PodNetError> {
    ip_route("del", cidr).await
}

async fn ip_route(verb: &'static str, cidr: &str) -> Result<(), PodNetError> {
    let err = |message: String| PodNetError {
        cidr: cidr.to_string(),
        verb,
        message,
    };
    let out = tokio::process::Command::new("ip")
        .args(["route", verb, "local", cidr, "dev", "lo"])
        .output()
        .await
        .map_err(|e| err(format!("running ip: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}
