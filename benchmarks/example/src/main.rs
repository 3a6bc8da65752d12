//! A tiny web server with no dependencies: rbd's bundled example project.
//! `cargo run`, then `curl localhost:3000/hello/rbd`.

mod handlers;
mod http;

use std::net::TcpListener;

fn main() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:3000")?;
    println!("listening on http://127.0.0.1:3000");
    for stream in listener.incoming() {
        let mut stream = stream?;
        if let Some(request) = http::read_request(&mut stream)? {
            let response = handlers::route(&request);
            http::write_response(&mut stream, &response)?;
        }
    }
    Ok(())
}
