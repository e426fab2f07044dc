//! A simple adaptive threadpool that returns a oneshot future.
//!
//! sensorgate patch (vendor/sled/PATCHES.md, item 3): sled's pool started
//! seven immortal threads at first use and decided further spawns from
//! counts read without the queue lock. This pool starts a thread only when a
//! task has no thread to take it, lets a thread exit after `IDLE_EXIT` without
//! work, and keeps all of its accounting under the queue's mutex.
//!
//! Invariant: every queued task has its own thread bound to take it, one that
//! will take the lock without waiting for any pool task to finish: a thread
//! `starting`, or an `idle` one that was woken (by `notify_one`, a timeout or
//! spuriously) and has not yet retaken the lock. `send` checks this under the
//! lock before queueing and starts a thread when it would not hold; if no
//! thread can be started (`MAX_THREADS` live, or the OS refused one), the task
//! is not queued but run on the calling thread. So a task that queues a task
//! and blocks on its result, many levels deep and from several threads,
//! always makes progress: the task it waits for never waits for a thread.
//!
//! Why `notify_one` suffices: `idle` counts the threads inside `wait_until`,
//! parked or woken. A task is queued either with a new `starting` thread, or
//! when `queue.len() < idle + starting`; its `notify_one` then wakes a parked
//! thread if there is one (one more woken thread for one more task), and if
//! there is none every idle thread is already woken, so the check itself
//! says there is a woken or starting thread for every task. Woken and
//! starting threads take a task if one is queued (a thread returning from a
//! task may take it first: one task and no bound thread fewer), and exit only
//! with an empty queue.

use std::{
    collections::VecDeque,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::atomic::{AtomicBool, Ordering::SeqCst},
    thread,
    time::{Duration, Instant},
};

use parking_lot::{Condvar, Mutex};

use crate::{debug_delay, warn, Error, Lazy, OneShot, Result};

// This is lower for CI reasons.
#[cfg(windows)]
const MAX_THREADS: usize = 16;

// sensorgate: 32, not 128. The pool starts a thread for every task that has none
// to take it, and the gateway's unit allows 96 tasks (TasksMax), which
// librdkafka's broker threads need too; at the cap a task runs on its caller.
#[cfg(not(windows))]
const MAX_THREADS: usize = 32;

/// How long a pool thread waits for work before it exits. A few seconds idle
/// leave no pool thread at all; a busy pool keeps the threads it uses, as
/// each one waits this long before leaving. sled's pool woke its threads
/// every second.
const IDLE_EXIT: Duration = Duration::from_secs(2);

type Work = Box<dyn FnOnce() + Send + 'static>;

/// The pool's state, all of it under one mutex.
struct State {
    /// Tasks not yet taken by a thread.
    queue: VecDeque<Work>,
    /// Threads inside `Condvar::wait_until`, parked or woken but not yet
    /// holding the lock again.
    idle: usize,
    /// Threads spawned that have not yet taken the lock.
    starting: usize,
    /// Live pool threads: starting, idle, or running a task.
    total: usize,
    /// Threads ever spawned, for the names `sled-io-N`.
    spawns: usize,
}

struct Pool {
    cv: Condvar,
    mu: Mutex<State>,
}

impl Pool {
    /// Queues `work` with a thread bound to take it, or hands it back when
    /// no thread can be bound to it: the caller then runs it.
    fn send(&self, work: Work) -> Option<Work> {
        let mut state = self.mu.lock();

        if state.queue.len() < state.idle + state.starting {
            state.queue.push_back(work);
            // Under the lock, so that `idle` and the threads parked on `cv`
            // are the same threads (a thread counts itself idle and parks
            // atomically with releasing the lock).
            self.cv.notify_one();
            return None;
        }

        if state.total < MAX_THREADS && spawn_thread(&mut state) {
            state.queue.push_back(work);
            return None;
        }

        Some(work)
    }
}

static POOL: Lazy<Pool, fn() -> Pool> = Lazy::new(init_pool);
static BROKEN: AtomicBool = AtomicBool::new(false);
static SPAWN_FAILURE_LOGGED: AtomicBool = AtomicBool::new(false);

fn init_pool() -> Pool {
    Pool {
        cv: Condvar::new(),
        mu: Mutex::new(State {
            queue: VecDeque::new(),
            idle: 0,
            starting: 0,
            total: 0,
            spawns: 0,
        }),
    }
}

/// Starts a thread accounted as `starting`, called with the lock held so
/// that the accounting is atomic with the decision. Returns false, with the
/// accounting undone, if the OS refuses the thread.
fn spawn_thread(state: &mut State) -> bool {
    let spawn_id = state.spawns;
    state.spawns += 1;
    state.starting += 1;
    state.total += 1;

    let spawn_res = thread::Builder::new()
        .name(format!("sled-io-{spawn_id}"))
        .spawn(perform_work);

    if let Err(e) = spawn_res {
        state.starting -= 1;
        state.total -= 1;

        if !SPAWN_FAILURE_LOGGED.swap(true, SeqCst) {
            // only execute this once
            warn!(
                "Failed to dynamically increase the threadpool size: {e:?}. \
                 I/O work that finds no pool thread runs on the thread \
                 that submits it."
            );
        }
        return false;
    }

    true
}

/// A pool thread: takes tasks while there are any, and exits after waiting
/// `IDLE_EXIT` for one.
fn perform_work() {
    debug_delay();
    let pool = &*POOL;
    let mut state = pool.mu.lock();
    state.starting -= 1;

    loop {
        while let Some(task) = state.queue.pop_front() {
            drop(state);
            run(task);
            debug_delay();
            state = pool.mu.lock();
        }

        let cutoff = Instant::now() + IDLE_EXIT;
        state.idle += 1;
        let mut timed_out = false;
        while state.queue.is_empty() && !timed_out {
            timed_out = pool.cv.wait_until(&mut state, cutoff).timed_out();
        }
        state.idle -= 1;

        if state.queue.is_empty() {
            state.total -= 1;
            return;
        }
    }
}

/// Runs a task, on a pool thread or inline. A panic is caught and marks the
/// pool broken (later spawns return an error); the thread carries on.
fn run(task: Work) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(task)) {
        let what = if let Some(s) = panic.downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = panic.downcast_ref::<String>() {
            s.clone()
        } else {
            "(non-string panic payload)".to_string()
        };
        // IO task panicked: spawns return an error from now on
        log::error!(
            "IO thread task unexpectedly panicked. \
             please report this error at the sled github repo. {what}"
        );
        BROKEN.store(true, SeqCst);
    }
}

/// Spawn a function on the threadpool.
///
/// The work is always accepted: queued for a pool thread, or, when no pool
/// thread can be started for it, run on the calling thread before this
/// returns (as sled does on platforms without the pool). After a task has
/// panicked the work is still done, and an error is returned.
pub fn spawn<F, R>(work: F) -> Result<OneShot<R>>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static + Sized,
{
    let (promise_filler, promise) = OneShot::pair();
    let task = move || {
        let result = (work)();
        promise_filler.fill(result);
    };

    debug_delay();
    if let Some(task) = POOL.send(Box::new(task)) {
        run(task);
    }

    if BROKEN.load(SeqCst) {
        return Err(Error::ReportableBug(
            "IO thread unexpectedly panicked. please report \
            this bug on the sled github repo."
                .to_string(),
        ));
    }

    Ok(promise)
}

#[cfg(test)]
mod tests {
    //! How to run them: vendor/sled/PATCHES.md, item 3. The idle and panic
    //! tests run in a child process (this test binary, re-executed): the
    //! panic marks the process-wide pool broken, and the idle test must be
    //! the pool's only user.

    use std::{
        process::{Command, Stdio},
        sync::mpsc,
        thread,
        time::{Duration, Instant},
    };

    use super::spawn;
    use crate::Error;

    /// Deadline for one round of nested tasks, or for one task.
    const DEADLINE: Duration = Duration::from_secs(30);
    /// Environment variable naming the child test to run.
    const CHILD: &str = "SLED_THREADPOOL_TEST_CHILD";

    /// A task that queues a task and blocks on its result, `depth` levels.
    fn nested(depth: usize) -> usize {
        if depth == 0 {
            return 0;
        }
        let child = spawn(move || nested(depth - 1)).expect("spawn failed");
        child.wait().expect("child task dropped its result") + 1
    }

    /// `rounds` times: `outer` OS threads each run tasks nested `depth`
    /// deep, every round within `DEADLINE`.
    fn nested_rounds(outer: usize, depth: usize, rounds: usize) {
        for round in 0..rounds {
            let (tx, rx) = mpsc::channel();
            for _ in 0..outer {
                let tx = tx.clone();
                thread::spawn(move || {
                    let _ = tx.send(nested(depth));
                });
            }
            drop(tx);

            let deadline = Instant::now() + DEADLINE;
            for _ in 0..outer {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(got) => assert_eq!(got, depth),
                    Err(e) => panic!(
                        "round {} of {}: {} threads' tasks nested {} deep \
                         did not finish within {:?} ({:?}): the pool hung",
                        round, rounds, outer, depth, DEADLINE, e
                    ),
                }
            }
        }
    }

    #[test]
    fn nested_waits_make_progress() {
        nested_rounds(8, 16, 200);
    }

    /// More tasks waiting at once than `MAX_THREADS`: the tasks that find
    /// no thread run on the thread that queues them.
    #[test]
    fn nested_waits_beyond_max_threads() {
        nested_rounds(8, 2 * super::MAX_THREADS / 8, 20);
    }

    /// This test's name as `--exact` wants it, for a test in this module.
    fn test_name(name: &str) -> String {
        let module = module_path!().splitn(2, "::").nth(1).unwrap();
        format!("{module}::{name}")
    }

    fn is_child(name: &str) -> bool {
        std::env::var(CHILD).is_ok_and(|v| v == name)
    }

    /// Runs the ignored test `name` alone in a child process.
    fn run_child(name: &str) {
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = Command::new(exe)
            .args([&test_name(name), "--exact", "--ignored", "--nocapture"])
            .env(CHILD, name)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the test binary");

        let deadline = Instant::now() + 2 * DEADLINE;
        while child.try_wait().expect("wait for the child").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "child test {} still running after {:?}",
                    name,
                    2 * DEADLINE
                );
            }
            thread::sleep(Duration::from_millis(20));
        }

        let out = child.wait_with_output().expect("child output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child test {} failed ({}):\n{}\n{}",
            name,
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Pool threads alive, counted by the OS.
    #[cfg(target_os = "linux")]
    fn sled_io_threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .expect("/proc/self/task")
            .filter_map(std::result::Result::ok)
            .filter(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.starts_with("sled-io"))
            })
            .count()
    }

    /// Polls until no pool thread is left, failing after `within`.
    #[cfg(target_os = "linux")]
    fn assert_no_threads_within(within: Duration, when: &str) {
        let deadline = Instant::now() + within;
        loop {
            let n = sled_io_threads();
            if n == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} sled-io threads still alive {:?} {}",
                n,
                within,
                when
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn idle_threads_exit() {
        run_child("idle_threads_exit_child");
    }

    #[cfg(target_os = "linux")]
    #[test]
    #[ignore = "run by idle_threads_exit in a child process"]
    fn idle_threads_exit_child() {
        const BUSY: usize = 8;

        if !is_child("idle_threads_exit_child") {
            return;
        }

        // BUSY tasks blocked at once, each holding a pool thread.
        let (started_tx, started_rx) = mpsc::channel();
        let mut releases = vec![];
        let mut promises = vec![];
        for i in 0..BUSY {
            let started_tx = started_tx.clone();
            let (release_tx, release_rx) = mpsc::channel::<()>();
            releases.push(release_tx);
            promises.push(
                spawn(move || {
                    started_tx.send(()).unwrap();
                    release_rx.recv_timeout(DEADLINE).expect("release");
                    i
                })
                .expect("spawn"),
            );
        }
        for _ in 0..BUSY {
            started_rx
                .recv_timeout(DEADLINE)
                .expect("blocked pool tasks did not all start");
        }
        let busy = sled_io_threads();
        assert!(busy >= BUSY, "{} tasks running on {} threads", BUSY, busy);

        for release in releases {
            release.send(()).unwrap();
        }
        for (i, mut promise) in promises.into_iter().enumerate() {
            assert_eq!(promise.wait_timeout(DEADLINE).expect("task result"), i);
        }

        assert_no_threads_within(
            Duration::from_secs(10),
            "after the pool's work was done",
        );

        // The pool still works after its threads have gone, and goes again.
        let mut promise = spawn(|| 42).expect("spawn after idle");
        assert_eq!(promise.wait_timeout(DEADLINE).expect("result"), 42);
        assert_no_threads_within(
            Duration::from_secs(10),
            "after a task on an emptied pool",
        );

        // The same with a database open, its flusher thread running.
        let db = crate::Config::new().temporary(true).open().expect("open");
        db.insert(b"k", b"v").expect("insert");
        db.flush().expect("flush");
        assert_no_threads_within(
            Duration::from_secs(10),
            "after writes to an open database",
        );
        db.insert(b"k", b"w").expect("insert after idle");
        db.flush().expect("flush after idle");
        assert_eq!(db.get(b"k").expect("get").as_deref(), Some(&b"w"[..]));
    }

    #[test]
    fn panicking_task_breaks_pool() {
        run_child("panicking_task_breaks_pool_child");
    }

    #[test]
    #[ignore = "run by panicking_task_breaks_pool in a child process"]
    fn panicking_task_breaks_pool_child() {
        if !is_child("panicking_task_breaks_pool_child") {
            return;
        }

        // The pool may catch the panic before this `spawn` returns: then it already says so.
        match spawn(|| panic!("deliberate panic in a pool task (threadpool test)")) {
            Ok(_) | Err(Error::ReportableBug(_)) => {}
            Err(e) => panic!("spawn failed otherwise: {e:?}"),
        }

        // The pool is marked broken once the panic is caught; poll for it.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (tx, rx) = mpsc::channel();
            match spawn(move || tx.send(()).unwrap()) {
                Err(Error::ReportableBug(_)) => {
                    // The work is still done: a write is never dropped.
                    rx.recv_timeout(DEADLINE)
                        .expect("work given to a broken pool did not run");
                    return;
                }
                Err(other) => panic!("unexpected error {:?}", other),
                Ok(mut promise) => {
                    promise.wait_timeout(DEADLINE).expect("task result");
                    assert!(
                        Instant::now() < deadline,
                        "spawn still succeeds 10 s after a task panicked"
                    );
                }
            }
        }
    }
}
