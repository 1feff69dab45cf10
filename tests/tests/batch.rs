//! Issue 14: short tasks several to a round trip (a worker's `--batch`), their reports in one
//! call (`StatusUpdate::also`), and one call waiting for many tasks (`POST /api/tasks/wait`),
//! against the real controller and worker binaries.

use std::time::Duration;

use serde_json::{Value, json};
use warp_common::commands::Command;
use warp_common::protocol::{TaskSpec, TaskState, WaitResponse};
use warp_tests::{ControllerProc, TempDir, http_agent, start_worker, status_of, wait_for};

const FAST: &[&str] = &["--poll-hold", "2", "--heartbeat-interval", "0.2"];

/// A worker spoken for by hand over HTTP.
struct RawWorker {
    agent: ureq::Agent,
    base: String,
    auth: String,
}

impl RawWorker {
    fn register(c: &ControllerProc, max_batch: u32) -> Result<RawWorker, (u16, Value)> {
        let agent = http_agent();
        let reg = json!({"protocol_version": warp_common::PROTOCOL_VERSION, "device": 0,
            "hostname": "raw", "capabilities": {"max_batch": max_batch}});
        let r: Value = agent
            .post(&format!("{}/api/workers/register", c.url))
            .set("Authorization", &format!("Bearer {}", c.token))
            .send_json(reg)
            .map_err(status_of)?
            .into_json()
            .unwrap();
        Ok(RawWorker {
            base: format!("{}/api/workers/{}", c.url, r["worker_id"].as_str().unwrap()),
            auth: format!("Bearer {}", r["token"].as_str().unwrap()),
            agent,
        })
    }
    /// The poll's tasks: `task`, then `more`.
    fn poll(&self) -> Vec<Value> {
        let r = self
            .agent
            .get(&format!("{}/poll", self.base))
            .set("Authorization", &self.auth)
            .call()
            .unwrap();
        assert_eq!(r.status(), 200, "a poll with work queued");
        tasks_of(&r.into_json().unwrap())
    }
    fn report(&self, task: &Value, body: Value) -> Result<Value, (u16, Value)> {
        Ok(self
            .agent
            .post(&format!(
                "{}/tasks/{}/status",
                self.base,
                task["id"].as_str().unwrap()
            ))
            .set("Authorization", &self.auth)
            .send_json(body)
            .map_err(status_of)?
            .into_json()
            .unwrap())
    }
}

fn tasks_of(reply: &Value) -> Vec<Value> {
    let mut all = vec![reply["task"].clone()];
    all.extend(reply["more"].as_array().cloned().unwrap_or_default());
    all.retain(|t| !t.is_null());
    all
}

/// A completed report of `task` that took 0 ms.
fn done(task: &Value) -> Value {
    json!({"lease": task["lease"], "state": "completed", "result": {"results": []},
        "elapsed_ms": 0})
}

fn echo(i: usize) -> TaskSpec {
    TaskSpec::new(vec![Command::Echo { value: json!(i) }])
}

/// The protocol: a kind never measured goes alone; once measured short, up to `max_batch`
/// tasks come in one reply; their reports travel in one call (`also`), each accepted or
/// refused on its own (`refused`), and that call's reply carries the next batch.
#[test]
fn short_tasks_come_in_batches_and_are_reported_in_one_call() {
    let dir = TempDir::new("batch-protocol");
    let c = ControllerProc::start(dir.path(), 0, FAST);
    let client = c.client();
    // Absurd or non-terminal batch parts are refused.
    let (code, body) = RawWorker::register(&c, 100_000).err().unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("max_batch"),
        "{body}"
    );
    let w = RawWorker::register(&c, 4).unwrap();
    client.submit(&echo(0)).unwrap();
    let first = w.poll();
    assert_eq!(first.len(), 1, "a kind never measured goes alone");
    w.report(&first[0], done(&first[0])).unwrap();
    let ids = client.submit_batch((1..=12).map(echo).collect()).unwrap();
    let batch = w.poll();
    let got: Vec<&str> = batch.iter().map(|t| t["id"].as_str().unwrap()).collect();
    let want: Vec<String> = ids[..4].iter().map(|i| i.to_string()).collect();
    assert_eq!(got, want, "a batch of 4 in the queue's order");
    let running = json!({"task": batch[0]["id"], "update":
        {"lease": batch[0]["lease"], "state": "running"}});
    let (code, body) = w
        .report(
            &batch[3],
            json!({"lease": batch[3]["lease"], "state": "completed",
            "also": [running]}),
        )
        .err()
        .unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not terminal"),
        "{body}"
    );
    // Cancel one of the batch: its report is refused, the others are applied.
    client.cancel(ids[1]).unwrap();
    let also: Vec<Value> = batch[..3]
        .iter()
        .map(|t| json!({"task": t["id"], "update": done(t)}))
        .collect();
    let mut last = done(&batch[3]);
    last["also"] = json!(also);
    last["want_next"] = json!(true);
    let reply = w.report(&batch[3], last).unwrap();
    assert_eq!(reply["refused"], json!([ids[1].to_string()]), "{reply}");
    for (i, id) in ids[..4].iter().enumerate() {
        let want = if i == 1 {
            TaskState::Cancelled
        } else {
            TaskState::Completed
        };
        assert_eq!(client.task(*id).unwrap().state, want, "task {i}");
    }
    let next = tasks_of(&reply);
    assert_eq!(next.len(), 4, "the next batch in the same reply: {reply}");
    assert_eq!(next[0]["id"], json!(ids[4].to_string()));
    assert_eq!(client.status().unwrap().batched_assignments, 6);
    // The raw worker leaves; its batch goes back to the queue uncounted.
    w.agent
        .post(&format!("{}/deregister", w.base))
        .set("Authorization", &w.auth)
        .send_json(json!({"reason": "test"}))
        .unwrap();
    let d = client.task(ids[5]).unwrap();
    assert_eq!(d.state, TaskState::Queued, "{d:?}");
}

/// The real worker with its default `--batch`: 300 program tasks, each with its own result,
/// most of them handed out in batches; `warp-controller wait` waits for them in a few calls.
#[test]
fn a_worker_runs_batches_of_program_tasks_each_with_its_own_result() {
    let dir = TempDir::new("batch-worker");
    let c = ControllerProc::start(dir.path(), 0, FAST);
    let _w = start_worker(dir.path(), &c.url, &c.token, 0, &[]);
    let _w2 = start_worker(dir.path(), &c.url, &c.token, 1, &[]);
    let client = c.client();
    warp_tests::wait_online(&client, 2);
    let out = std::process::Command::new(warp_tests::bin("warp-controller"))
        .args([
            "submit",
            "--controller",
            &c.url,
            "--array",
            "1-300",
            "--label",
            "arr",
        ])
        .args(["--exec", "--", "sh", "-c", "echo task-$WARP_TASK_INDEX"])
        .env("WARP_ADMIN_TOKEN", &c.admin_token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One id per line, in index order (1..=300).
    let ids: Vec<uuid::Uuid> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 300);
    let out = std::process::Command::new(warp_tests::bin("warp-controller"))
        .args(["wait", "--controller", &c.url, "--label", "arr"])
        .env("WARP_ADMIN_TOKEN", &c.admin_token)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("300 completed, 0 failed"), "{stderr}");
    for (i, id) in ids.iter().enumerate() {
        let d = client.task(*id).unwrap();
        assert_eq!(d.history.len(), 1, "{d:?}");
        let r = d.result.unwrap();
        let tail = r["results"][0]["stdout_tail"].as_str().unwrap();
        assert_eq!(tail, format!("task-{}\n", i + 1), "task {id}");
    }
    let metrics = warp_tests::http_agent()
        .get(&format!("{}/metrics", c.url))
        .set("Authorization", &format!("Bearer {}", c.admin_token))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let batched: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("warp_batched_assignments_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(batched > 100, "only {batched} of 300 tasks came in batches");
}

/// `POST /api/tasks/wait`: held until every task is terminal, or answered at the hold with
/// the pending ones named; failures come in full; bad input gets 400 or 404.
#[test]
fn one_call_waits_for_many_tasks() {
    let dir = TempDir::new("wait-many");
    let c = ControllerProc::start(dir.path(), 0, FAST);
    let client = c.client();
    let mut specs: Vec<TaskSpec> = (0..30).map(echo).collect();
    specs.push(TaskSpec::new(vec![Command::exec(["sh", "-c", "exit 7"])]));
    let ids = client.submit_batch(specs).unwrap();
    // No worker yet: the hold passes and all are pending.
    let t = std::time::Instant::now();
    let r = client.wait_many(&ids, Duration::from_millis(300)).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    assert_eq!((r.completed.len(), r.pending.len()), (0, 31));
    let waiter = {
        let (client, ids) = (c.client(), ids.clone());
        std::thread::spawn(move || client.wait_many(&ids, Duration::from_secs(60)).unwrap())
    };
    std::thread::sleep(Duration::from_millis(200));
    let _w = start_worker(dir.path(), &c.url, &c.token, 0, &[]);
    let r: WaitResponse = waiter.join().unwrap();
    assert_eq!(r.completed.len(), 30, "{r:?}");
    assert!(r.pending.is_empty());
    assert_eq!(r.unsuccessful.len(), 1);
    assert_eq!(r.unsuccessful[0].id, ids[30]);
    assert!(r.unsuccessful[0].error.as_deref().unwrap().contains('7'));
    // All finished: answered at once; repeats count once.
    let again = [&ids[..], &ids[..3]].concat();
    let r = client.wait_many(&again, Duration::from_secs(60)).unwrap();
    assert_eq!(r.completed.len() + r.unsuccessful.len(), 31);
    let agent = http_agent();
    let post = |body: Value| {
        agent
            .post(&format!("{}/api/tasks/wait", c.url))
            .set("Authorization", &format!("Bearer {}", c.admin_token))
            .send_json(body)
            .map_err(status_of)
    };
    let unknown = uuid::Uuid::new_v4();
    let (code, body) = post(json!({"ids": [ids[0], unknown]})).err().unwrap();
    assert_eq!(code, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains(&unknown.to_string())
    );
    assert_eq!(post(json!({"ids": []})).err().unwrap().0, 400);
    let many: Vec<String> = (0..10_001).map(|_| ids[0].to_string()).collect();
    assert_eq!(post(json!({"ids": many})).err().unwrap().0, 400);
    assert_eq!(
        post(json!({"ids": [ids[0]], "timeout_s": 301}))
            .err()
            .unwrap()
            .0,
        400
    );
    wait_for(Duration::from_secs(5), "the controller to answer", || {
        client.status().ok()
    });
}
