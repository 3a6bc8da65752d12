use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

pub struct Request {
    pub method: String,
    pub path: String,
}

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

pub fn read_request(stream: &mut TcpStream) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    BufReader::new(stream.try_clone()?).read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    Ok(match (parts.next(), parts.next()) {
        (Some(method), Some(path)) => Some(Request { method: method.into(), path: path.into() }),
        _ => None,
    })
}

pub fn write_response(stream: &mut TcpStream, response: &Response) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {} OK\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n{}",
        response.status,
        response.content_type,
        response.body.len(),
        response.body
    )
}
