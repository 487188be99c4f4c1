//! [`CommandSource`]: credentials from a program the host already trusts
//! with them (`gcloud auth print-access-token`, `az account
//! get-access-token`, a secrets manager's CLI).

use std::ffi::OsString;
use std::fmt;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::auth::{AuthScheme, Credential};

use super::credential::{CredentialFuture, CredentialSource};

/// The most output a token command may print; more is refused.
const MAX_OUTPUT: u64 = 64 * 1024;

/// A [`CredentialSource`] that runs a program and sends what it prints
/// (trimmed) as a bearer token, or as an API key.
///
/// The program runs directly, not through a shell, with stdin closed. It
/// must exit with status 0 within the time limit (default 30 s; past it the
/// program is killed) and print one non-empty UTF-8 token of at most 64 KiB.
/// Anything else fails the fetch with an error that names the program and
/// what went wrong (its exit status and the first line of its stderr) and
/// never what it printed on stdout.
///
/// ```no_run
/// use std::time::Duration;
/// use llm_tower::{Gemini, RefreshLayer};
/// use llm_tower::refresh::CommandSource;
/// use tower::Layer;
///
/// let vertex = Gemini::vertex("my-project", "us-central1")
///     .model("gemini-2.5-flash")
///     .build()?;
/// // gcloud's access tokens live an hour: refresh a little before.
/// let gcloud = CommandSource::new("gcloud")
///     .args(["auth", "print-access-token"])
///     .valid_for(Duration::from_secs(55 * 60));
/// let service = RefreshLayer::new(gcloud).layer(vertex);
/// # Ok::<(), llm_tower::Error>(())
/// ```
#[derive(Clone)]
pub struct CommandSource {
    program: OsString,
    args: Vec<OsString>,
    timeout: Duration,
    scheme: AuthScheme,
    valid_for: Option<Duration>,
}

impl CommandSource {
    /// Runs `program` (found on `PATH` unless it is a path).
    pub fn new(program: impl Into<OsString>) -> Self {
        CommandSource {
            program: program.into(),
            args: Vec::new(),
            timeout: Duration::from_secs(30),
            scheme: AuthScheme::Bearer,
            valid_for: None,
        }
    }

    /// Adds arguments.
    pub fn args<I, A>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// How long the program may run (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How the output is sent (default [`AuthScheme::Bearer`];
    /// [`AuthScheme::ApiKey`] for the provider's API-key header).
    pub fn scheme(mut self, scheme: AuthScheme) -> Self {
        self.scheme = scheme;
        self
    }

    /// How long each credential is good for: the refresh layer fetches a
    /// new one before then (by its margin). By default a credential is
    /// used until the provider refuses it.
    pub fn valid_for(mut self, ttl: Duration) -> Self {
        self.valid_for = Some(ttl);
        self
    }

    async fn run(self) -> Result<Credential, CommandError> {
        let name = self.program.to_string_lossy().into_owned();
        let fail = |what: String| CommandError {
            program: name.clone(),
            what,
        };
        let mut child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(format!("could not start: {e}")))?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let read = async {
            // Both at once: a program that fills one pipe while the other is
            // read would wait forever.
            let (out, err) = futures_util::future::try_join(
                read_at_most(stdout, MAX_OUTPUT + 1),
                read_at_most(stderr, MAX_OUTPUT),
            )
            .await?;
            let status = child.wait().await?;
            Ok::<_, std::io::Error>((out, err, status))
        };
        // Dropping the child (on every early return) kills it.
        let (out, err, status) = match tokio::time::timeout(self.timeout, read).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => return Err(fail(format!("failed while running: {e}"))),
            Err(_) => return Err(fail(format!("did not finish within {:?}", self.timeout))),
        };
        if out.len() as u64 > MAX_OUTPUT {
            return Err(fail(format!("printed more than {MAX_OUTPUT} bytes")));
        }
        if !status.success() {
            let first = String::from_utf8_lossy(&err);
            let first = first.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            let first: String = first.trim().chars().take(200).collect();
            return Err(fail(if first.is_empty() {
                format!("exited with {status}")
            } else {
                format!("exited with {status}: {first}")
            }));
        }
        let token = std::str::from_utf8(&out)
            .map_err(|_| fail("printed something that is not UTF-8".into()))?
            .trim();
        if token.is_empty() {
            return Err(fail("printed nothing".into()));
        }
        let mut credential = Credential::new(token, self.scheme.clone());
        if let Some(ttl) = self.valid_for {
            credential = credential.expires_in(ttl);
        }
        Ok(credential)
    }
}

/// What `pipe` gives, up to `limit` bytes; the rest is read and dropped, so
/// that the program never waits on a full pipe.
async fn read_at_most(
    pipe: Option<impl tokio::io::AsyncRead + Unpin>,
    limit: u64,
) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    if let Some(mut pipe) = pipe {
        (&mut pipe).take(limit).read_to_end(&mut out).await?;
        tokio::io::copy(&mut pipe, &mut tokio::io::sink()).await?;
    }
    Ok(out)
}

impl CredentialSource for CommandSource {
    fn fetch(&self) -> CredentialFuture {
        let this = self.clone();
        Box::pin(async move { this.run().await.map_err(Into::into) })
    }
}

impl fmt::Debug for CommandSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandSource")
            .field("program", &self.program)
            // Arguments may hold secrets (a vault path, a client secret).
            .field("args", &format_args!("[{} hidden]", self.args.len()))
            .field("timeout", &self.timeout)
            .field("scheme", &self.scheme)
            .field("valid_for", &self.valid_for)
            .finish()
    }
}

/// Why a [`CommandSource`] gave no credential.
#[derive(Debug)]
struct CommandError {
    program: String,
    what: String,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "credential command {:?} {}", self.program, self.what)
    }
}

impl std::error::Error for CommandError {}
