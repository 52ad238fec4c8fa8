//! One client connection at the message level: [`Connection`] reads frames as typed requests
//! and writes typed events as frames, so the server never handles bytes or JSON itself.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::Value;

use super::event::{ErrorCode, Event};
use super::protocol::{read_frame, write_frame, Attachment, FrameError, FrameLimits};
use super::request::{parse_request, Envelope, RequestError};

/// Streams a connection runs over: split into a reader and a writer, and shut down.
pub trait Stream: Read + Write + Send + Sized + 'static {
    /// A second handle to the same connection.
    fn try_clone_stream(&self) -> std::io::Result<Self>;
    /// Closes one or both directions (errors are moot: the peer may be gone already).
    fn shutdown_stream(&self, how: Shutdown);
    /// Bounds how long a write may block (`None`: forever).
    fn set_write_timeout_stream(&self, timeout: Option<Duration>);
}

/// `Stream` for socket types whose inherent methods have these names (Unix and TCP).
macro_rules! impl_stream {
    ($($socket:ty),*) => {$(
        impl Stream for $socket {
            fn try_clone_stream(&self) -> std::io::Result<Self> {
                self.try_clone()
            }
            fn shutdown_stream(&self, how: Shutdown) {
                let _ = self.shutdown(how);
            }
            fn set_write_timeout_stream(&self, timeout: Option<Duration>) {
                let _ = self.set_write_timeout(timeout);
            }
        }
    )*};
}

impl_stream!(UnixStream, std::net::TcpStream);

/// Why no request could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The connection failed or ended inside a frame; nobody is left to tell.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// The stream is not at a frame boundary any more; the connection must close.
    #[error("framing lost: {0}")]
    FramingLost(String),
    /// A whole frame with an invalid header or attachments; the next frame can be read.
    #[error("{0}")]
    BadFrame(String),
    /// A well-framed request that cannot be served, answering request `id`.
    #[error("{error}")]
    Refused { id: Value, error: RequestError },
}

impl ReadError {
    /// Whether the connection must close after this error.
    pub fn ends_connection(&self) -> bool {
        matches!(self, ReadError::Io(_) | ReadError::FramingLost(_))
    }

    /// The `error` event that tells the client, when it can still be told.
    pub fn event(&self) -> Option<Event> {
        let null = &Value::Null;
        match self {
            ReadError::Io(_) => None,
            ReadError::FramingLost(message) => {
                Some(Event::error(null, None, ErrorCode::Framing, message))
            }
            ReadError::BadFrame(message) => {
                Some(Event::error(null, None, ErrorCode::BadFrame, message))
            }
            ReadError::Refused { id, error } => {
                Some(Event::error(id, None, error.code, &error.message))
            }
        }
    }
}

/// A client connection: typed requests in, typed events out.
pub struct Connection<S> {
    stream: S,
    limits: FrameLimits,
}

impl<S: Stream> Connection<S> {
    /// A connection over `stream` that refuses frames with more than `max_frame_bytes` of
    /// attachments.
    pub fn new(stream: S, max_frame_bytes: u64) -> Self {
        Connection {
            stream,
            limits: FrameLimits {
                max_payload: max_frame_bytes,
            },
        }
    }

    /// The next request; `None` when the client closed the connection between frames.
    pub fn read_request(&mut self) -> Result<Option<Envelope>, ReadError> {
        let frame = match read_frame(&mut self.stream, self.limits) {
            Ok(frame) => frame,
            Err(FrameError::Closed) => return Ok(None),
            Err(FrameError::Io(error)) => return Err(ReadError::Io(error)),
            Err(FrameError::FramingLost(message)) => return Err(ReadError::FramingLost(message)),
            Err(FrameError::Invalid(message)) => return Err(ReadError::BadFrame(message)),
        };
        let id = frame.header.get("id").cloned().unwrap_or_default();
        parse_request(frame)
            .map(Some)
            .map_err(|error| ReadError::Refused { id, error })
    }

    /// Sends `event` with `attachments` as one frame.
    pub fn write_event(
        &mut self,
        event: &Event,
        attachments: &[(Attachment, Vec<u8>)],
    ) -> std::io::Result<()> {
        // Through a JSON value: its keys come out sorted, as the frames of protocol 1 always
        // had them.
        let header = serde_json::to_value(event).map_err(std::io::Error::other)?;
        write_frame(&mut self.stream, &header, attachments)
    }

    /// A second handle to the same connection, for the thread that writes events while this
    /// one reads requests.
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Connection {
            stream: self.stream.try_clone_stream()?,
            limits: self.limits,
        })
    }

    /// Closes one or both directions.
    pub fn shutdown(&self, how: Shutdown) {
        self.stream.shutdown_stream(how);
    }

    /// Bounds how long writing an event may block (`None`: forever).
    pub fn set_write_timeout(&self, timeout: Option<Duration>) {
        self.stream.set_write_timeout_stream(timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::daemon::request::Request;

    #[test]
    fn requests_in_events_out_and_errors_told_apart() {
        let (client, daemon) = UnixStream::pair().unwrap();
        let mut client = Connection::new(client, 1 << 20);
        let mut daemon = Connection::new(daemon, 1 << 20);
        // A client writes raw headers; the daemon reads typed requests.
        let mut raw = client.stream.try_clone().unwrap();
        write_frame(
            &mut raw,
            &json!({"type": "ping", "id": 4, "extra": true}),
            &[],
        )
        .unwrap();
        write_frame(&mut raw, &json!({"type": "teleport", "id": 5}), &[]).unwrap();
        write_frame(
            &mut raw,
            &json!({"type": "cancel", "id": 6, "job": "x"}),
            &[],
        )
        .unwrap();
        let envelope = daemon.read_request().unwrap().unwrap();
        assert_eq!(envelope.id, json!(4));
        assert!(matches!(envelope.request, Request::Ping));
        let error = daemon.read_request().unwrap_err();
        assert!(!error.ends_connection());
        let Some(Event::Error { id, code, .. }) = error.event() else {
            panic!("{error}")
        };
        assert_eq!((id, code), (json!(5), ErrorCode::UnknownRequest));
        let error = daemon.read_request().unwrap_err();
        assert!(
            matches!(&error, ReadError::Refused { error, .. } if error.code == ErrorCode::BadRequest && error.message.starts_with("cancel:")),
            "{error}"
        );
        // Garbage ends the connection with a `framing` error (12 bytes: one frame prefix).
        raw.write_all(b"GET / HTTP/1").unwrap();
        let error = daemon.read_request().unwrap_err();
        assert!(error.ends_connection());
        assert!(matches!(
            error.event(),
            Some(Event::Error {
                code: ErrorCode::Framing,
                ..
            })
        ));
        // Events arrive as frames with the wire's field names.
        daemon
            .write_event(&Event::Pong { id: json!(4) }, &[])
            .unwrap();
        let frame = read_frame(
            &mut client.stream,
            FrameLimits {
                max_payload: 1 << 20,
            },
        )
        .unwrap();
        assert_eq!(frame.header, json!({"type": "pong", "id": 4}));
        // A client that hangs up between frames is an end, not an error.
        drop(raw);
        client.shutdown(Shutdown::Both);
        assert!(matches!(daemon.read_request(), Ok(None)));
    }
}
