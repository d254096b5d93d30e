//! A child process under test: its stdout as a stream of lines with bounded waits, its stderr
//! kept for diagnostics, and a guarantee that it is killed and reaped whatever happens.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Serialises starting a child with holding a data directory open in this process.
///
/// The store's `LOCK` is an `flock`, which belongs to the open file description: a child
/// forked while this process holds a store open shares that description until it `exec`s
/// (the descriptor is close-on-exec, but only from the `exec` on). If the test then closes
/// its store and starts the writer, the writer can find the directory still locked by that
/// half-started child. Tests that run in parallel threads take this lock around `spawn` and
/// for as long as they hold a store open ([`crate::writer::reopen`] does).
pub fn fork_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long reaping a process may take once it has been killed or has closed its stdout. A
/// SIGKILLed process can only be held up by I/O in progress (an `fdatasync`), which finishes.
const REAP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running child process. Dropping it kills (SIGKILL) and reaps the process, so a failing
/// test never leaves a writer behind.
#[derive(Debug)]
pub struct ChildProcess {
    child: Child,
    status: Option<ExitStatus>,
    lines: Receiver<String>,
    stdout_thread: Option<JoinHandle<()>>,
    stderr: Arc<Mutex<String>>,
    stderr_thread: Option<JoinHandle<()>>,
    /// Every stdout line received so far, for failure messages.
    transcript: Vec<String>,
}

impl ChildProcess {
    /// Starts `cmd` with stdin closed and stdout and stderr captured.
    pub fn spawn(mut cmd: Command) -> Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawned = {
            let _no_store_open = fork_lock();
            cmd.spawn()
        };
        let mut child = spawned.with_context(|| format!("starting {cmd:?}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
        let stdout_thread = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let stderr_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Ok(Self {
            child,
            status: None,
            lines,
            stdout_thread: Some(stdout_thread),
            stderr,
            stderr_thread: Some(stderr_thread),
            transcript: Vec::new(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next stdout line; `None` once stdout is closed. Fails if no line comes within
    /// `timeout`.
    pub fn next_line(&mut self, timeout: Duration) -> Result<Option<String>> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => {
                self.transcript.push(line.clone());
                Ok(Some(line))
            }
            Err(RecvTimeoutError::Disconnected) => Ok(None),
            Err(RecvTimeoutError::Timeout) => {
                bail!(
                    "no output from pid {} within {timeout:?}\n{}",
                    self.pid(),
                    self.diagnostics()
                )
            }
        }
    }

    /// Kills the process with SIGKILL (sent to its pid; `Child::kill` does nothing if it was
    /// already reaped, so a recycled pid is never hit), reaps it, and returns every stdout line
    /// it wrote that was not read yet: they were all true when written.
    pub fn kill(&mut self) -> Result<(ExitStatus, Vec<String>)> {
        if self.status.is_none() {
            self.child
                .kill()
                .with_context(|| format!("sending SIGKILL to pid {}", self.pid()))?;
        }
        let status = self.reap(REAP_TIMEOUT)?;
        Ok((status, self.rest()))
    }

    /// Waits (at most `timeout`) for the process to exit by itself; returns its status and
    /// the stdout lines not read yet.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<(ExitStatus, Vec<String>)> {
        let deadline = Instant::now() + timeout;
        let mut rest = Vec::new();
        // Stdout closes when the process exits (nothing else holds the pipe).
        while let Some(line) = self.next_line(deadline.saturating_duration_since(Instant::now()))? {
            rest.push(line);
        }
        let status = self.reap(REAP_TIMEOUT)?;
        rest.extend(self.rest());
        Ok((status, rest))
    }

    /// What the process wrote so far: stdout lines read and its stderr.
    pub fn diagnostics(&self) -> String {
        let stderr = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        format!(
            "--- stdout ({} lines, last 20) ---\n{}\n--- stderr ---\n{}",
            self.transcript.len(),
            self.transcript[self.transcript.len().saturating_sub(20)..].join("\n"),
            *stderr
        )
    }

    /// Reaps the process, polling with a deadline (std offers no timed wait).
    fn reap(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().context("waiting for the child")? {
                self.status = Some(s);
                return Ok(s);
            }
            if Instant::now() >= deadline {
                bail!(
                    "pid {} did not exit within {timeout:?}\n{}",
                    self.pid(),
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// After the process is gone: joins the reader threads and returns the unread lines.
    fn rest(&mut self) -> Vec<String> {
        // The pipes are closed once the process is gone, so the readers end at once.
        if let Some(t) = self.stdout_thread.take() {
            let _ = t.join();
        }
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        let rest: Vec<String> = self.lines.try_iter().collect();
        self.transcript.extend(rest.iter().cloned());
        rest
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
