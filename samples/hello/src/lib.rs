//! A wasi:http component, written with Weft's guest SDK: answers
//! `Hello from <pod name>` on every path (`$GREETING from <pod name>` when
//! GREETING is set). Like Kubernetes, Weft sets HOSTNAME to the pod name.
//! With LOG_REQUESTS set, each request is logged to stdout (`kubectl logs`).

use weft_guest::http::{Request, Response};

fn hello(req: Request) -> Response {
    let name = weft_guest::pod_name();
    // GREETING (from the pod's env, e.g. a ConfigMap) replaces "Hello".
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".to_string());
    if std::env::var_os("LOG_REQUESTS").is_some() {
        println!("{} {} answered by {name}", req.method, req.path);
    }
    Response::text(200, format!("{greeting} from {name}\n"))
}

weft_guest::http_handler!(hello);
