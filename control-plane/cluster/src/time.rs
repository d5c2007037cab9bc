//! Kubernetes' text forms of time: `metav1.Time` (seconds) and
//! `metav1.MicroTime` (microseconds), both UTC with a `Z`.

use jiff::Timestamp;

/// `metav1.Time`, as in creationTimestamp and condition times.
pub fn ts(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `metav1.MicroTime`, as in Lease renewTime.
pub fn micro(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}
