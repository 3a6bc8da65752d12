use crate::http::{Request, Response};

pub fn route(request: &Request) -> Response {
    match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/") => json(200, r#"{"service": "hello-web", "status": "ok"}"#.to_string()),
        ("GET", path) if path.starts_with("/hello/") => greet(&path["/hello/".len()..]),
        _ => json(404, r#"{"error": "not found"}"#.to_string()),
    }
}

fn greet(name: &str) -> Response {
    let greeting = "Hello";
    json(200, format!(r#"{{"greeting": "{greeting}, {name}!"}}"#))
}

fn json(status: u16, body: String) -> Response {
    Response { status, content_type: "application/json", body }
}
