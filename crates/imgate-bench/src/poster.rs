//! A keep-alive HTTP/1.1 poster: one connection, one request at a time.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::Error;

pub struct Poster {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
}

/// A whole answer: its status, its `Retry-After` (seconds) when it has one, its body.
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub body: Bytes,
}

impl Poster {
    /// Connect to `base` (`http://host:port`).
    pub async fn connect(base: &str) -> Result<Poster, Error> {
        let authority = base.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let tcp = tokio::net::TcpStream::connect(&authority).await?;
        tcp.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Poster { sender, authority })
    }

    /// POST `body` to `path`; the status, after the whole answer was read.
    pub async fn post(&mut self, path: &str, content_type: &'static str, body: Bytes) -> Result<u16, Error> {
        Ok(self.send(path, content_type, body).await?.status)
    }

    /// POST `body` to `path`; the whole answer.
    pub async fn send(
        &mut self,
        path: &str,
        content_type: &'static str,
        body: Bytes,
    ) -> Result<Answer, Error> {
        let req = hyper::Request::post(path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(body))?;
        self.request(req).await
    }

    /// GET `path`; the whole answer.
    pub async fn get(&mut self, path: &str) -> Result<Answer, Error> {
        let req =
            hyper::Request::get(path).header(hyper::header::HOST, &self.authority).body(Full::default())?;
        self.request(req).await
    }

    async fn request(&mut self, req: hyper::Request<Full<Bytes>>) -> Result<Answer, Error> {
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Answer { status, retry_after, body })
    }
}
