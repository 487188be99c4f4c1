//! A TCP stream that can end in a reset (RST) rather than a clean close.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The connection's socket; closed with an RST (zero linger) when the script
/// asked for a reset.
pub(super) struct ResettableStream {
    stream: Option<TcpStream>,
    reset: Arc<AtomicBool>,
}

impl ResettableStream {
    /// `stream`, reset on drop once `reset` is set.
    pub(super) fn new(stream: TcpStream, reset: Arc<AtomicBool>) -> Self {
        ResettableStream {
            stream: Some(stream),
            reset,
        }
    }

    fn stream(&mut self) -> Pin<&mut TcpStream> {
        // `stream` is only taken in `drop`.
        Pin::new(
            self.stream
                .as_mut()
                .expect("the stream is present until drop"),
        )
    }
}

impl Drop for ResettableStream {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst)
            && let Some(s) = self.stream.take()
        {
            let _ = s.set_zero_linger();
        }
    }
}

impl AsyncRead for ResettableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.reset.load(Ordering::SeqCst) {
            // A graceful shutdown would send FIN before the RST.
            return Poll::Ready(Ok(()));
        }
        self.stream().poll_shutdown(cx)
    }
}
