# Generates controller/openapi.json: python3 scripts/dev/gen-openapi.py > controller/openapi.json
# Edit this file, not the JSON, when a route or body changes; the tests compare the JSON with
# the route table (controller/src/http.rs) and with what the controller serves.
import json
PROTOCOL_VERSION = 1  # warp_common::PROTOCOL_VERSION; the Rust test compares them
def ref(n): return {"$ref": f"#/components/schemas/{n}"}
def body(n): return {"required": True, "content": {"application/json": {"schema": ref(n)}}}
def ok(n, code="200", desc="OK"): return {code: {"description": desc, "content": {"application/json": {"schema": ref(n) if isinstance(n,str) else n}}}}
E = {"description": "error", "content": {"application/json": {"schema": ref("ApiError")}}}
def errs(*codes):
    d = {"400":"malformed JSON, wrong types or invalid values","401":"missing or wrong token","404":"unknown id or route","409":"stale lease, already finished, or the target worker is not available","413":"body over the limit","503":"shutting down"}
    return {c: dict(E, description=d[c]) for c in codes}
def op(summary, responses, req=None, params=None, public=False, desc=None):
    o = {"summary": summary, "responses": responses}
    if desc: o["description"] = desc
    if req: o["requestBody"] = body(req)
    if params: o["parameters"] = params
    if public: o["security"] = []
    return o
def p(name, where="path", schema=None, desc=None, required=None):
    d = {"name": name, "in": where, "required": where == "path" if required is None else required, "schema": schema or {"type": "string"}}
    if desc: d["description"] = desc
    return d
wid = p("id", desc="worker id (UUID)"); tid = p("id", desc="task id (UUID)")
S = lambda **k: dict(k)
obj = lambda props, req=(): {"type": "object", "properties": props, "required": list(req)}
string = {"type": "string"}; uuidt = {"type": "string", "format": "uuid"}; u64 = {"type": "integer", "minimum": 0, "maximum": 18446744073709551615}; uq = {"type": "integer", "format": "int64", "minimum": 0}
i32 = {"type": "integer", "format": "int32"}; u32 = {"type": "integer", "minimum": 0, "maximum": 4294967295}; nullable = lambda s: {"oneOf": [s, {"type": "null"}]}
schemas = {
 "ApiError": obj({"error": string, "code": string}, ["error", "code"]),
 "Command": {"description": "{\"name\": <command name>, \"params\": {...}}. The movie commands (LoadGainRef, LoadStack, MovieProcessMovement, MovieProcessCtf, MovieExportMovie, MovieCreateThumbnail) are described in common/src/commands.rs. Unknown names or params are refused with 400.",
   "oneOf": [{"type": "object", "additionalProperties": False, "required": ["name", "params"], "properties": {"name": {"type": "string", "enum": ["Exec"]}, "params": {"type": "object", "additionalProperties": False, "properties": {"argv": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}, "env": {"type": "object", "additionalProperties": {"type": "string"}}, "cwd": {"type": "string", "nullable": True}, "timeout_s": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1e9, "nullable": True}, "allow_failure": {"type": "boolean"}, "stdout_path": {"type": "string", "minLength": 1, "nullable": True}, "stderr_path": {"type": "string", "minLength": 1, "nullable": True}}, "required": ['argv']}}},
    {"type": "object", "additionalProperties": False, "required": ["name", "params"], "properties": {"name": {"type": "string", "enum": ["Sleep"]}, "params": {"type": "object", "additionalProperties": False, "properties": {"ms": u64}, "required": ['ms']}}},
    {"type": "object", "additionalProperties": False, "required": ["name", "params"], "properties": {"name": {"type": "string", "enum": ["Fail"]}, "params": {"type": "object", "additionalProperties": False, "properties": {"message": {"type": "string"}}, "required": ['message']}}},
    {"type": "object", "additionalProperties": False, "required": ["name", "params"], "properties": {"name": {"type": "string", "enum": ["Echo"]}, "params": {"type": "object", "additionalProperties": False, "properties": {"value": {}}, "required": []}}},
    {"type": "object", "additionalProperties": False, "required": ["name", "params"], "properties": {"name": {"type": "string", "enum": ["WaitAsyncTasks"]}, "params": {"type": "object", "additionalProperties": False, "properties": {}, "required": []}}},
    {"type": "object", "additionalProperties": False, "required": ["name", "params"], "properties": {"name": {"type": "string", "enum": ["GcCollect"]}, "params": {"type": "object", "additionalProperties": False, "properties": {}, "required": []}}}]},
 "InitPart": obj({"fingerprint": {"type": "string", "minLength": 1}, "commands": {"type": "array", "items": ref("Command")}}, ["fingerprint", "commands"]),
 "Capabilities": obj({"gpu": nullable(obj({"name": {"type":"string","maxLength":256}, "memory_mb": u64}, ["name","memory_mb"])), "cpu_threads": u32, "commands": {"type":"array","items":{"type":"string","maxLength":64},"maxItems":256}, "max_batch": dict(u32, maximum=256, description="the most tasks the worker takes in one assignment (its --batch); 0 or 1: one at a time")}),
 "RegisterRequest": obj({"protocol_version": {"type": "integer", "enum": [PROTOCOL_VERSION], "description": "this controller's protocol; another is refused with 400 protocol_version_mismatch naming both"}, "device": i32, "hostname": {"type":"string","maxLength":255}, "capabilities": ref("Capabilities"), "worker_version": {"type":"string","maxLength":64}, "spawn_id": {"type":"string","maxLength":128,"nullable":True}, "pid": dict(u32, nullable=True)}, ["protocol_version","device","hostname"]),
 "RegisterResponse": obj({"worker_id": uuidt, "token": string, "heartbeat_interval_ms": u64, "poll_hold_ms": u64, "protocol_version": u64, "controller_version": string}, ["worker_id","token","heartbeat_interval_ms","poll_hold_ms","protocol_version","controller_version"]),
 "Assignment": obj({"id": uuidt, "lease": u64, "attempt": u64, "init": ref("InitPart"), "commands": {"type":"array","items": ref("Command")},
    "read_ahead": {"type":"array","items": string, "description": "Files the worker's next task will read; the worker may read them into the page cache once this task has read its own inputs. That task is kept for this worker, though an otherwise idle worker may take it."}}, ["id","lease","attempt","commands"]),
 "PollResponse": obj({"task": ref("Assignment"), "more": {"type":"array","items":ref("Assignment"),"description":"further tasks leased with `task`, to run after it in this order: only to a worker with max_batch above 1, and only tasks of a kind measured as short (about 20 ms of expected work per batch)"}}, ["task"]),
 "ConsoleLine": obj({"n": u64, "text": string}, ["n","text"]),
 "HeartbeatRequest": obj({"current_task": uuidt, "lease": u64, "held_fingerprint": string, "console": {"type":"array","items":ref("ConsoleLine")}}),
 "Durability": dict(obj({"run": uuidt, "through": u64}, ["run", "through"]), description="How far a controller with a state directory has its journal on disk: records up to `through` of this controller process's journal (`run`, new at every start)."),
 "HeartbeatResponse": obj({"cancel": {"type":"array","items":uuidt}, "durable": ref("Durability")}, ["cancel"]),
 "Progress": obj({"fraction": {"type":"number"}, "message": string}),
 "StatusUpdate": obj({"lease": u64, "state": {"type":"string","enum":["running","progress","completed","failed"]}, "result": {}, "error": string, "progress": ref("Progress"), "elapsed_ms": u64, "held_fingerprint": string, "console": {"type":"array","items":ref("ConsoleLine")}, "want_next": {"type":"boolean"}, "permanent": {"type":"boolean"}, "also": {"type":"array","maxItems":256,"items":ref("TaskReport"),"description":"terminal reports of the batch's earlier tasks, applied in order before this one, each accepted or refused on its own (the reply's `refused`)"}}, ["lease","state"]),
 "TaskReport": obj({"task": uuidt, "update": ref("StatusUpdate")}, ["task","update"]),
 "StatusResponse": obj({"accepted": {"type":"boolean"}, "cancel": {"type":"boolean", "description": "reserved: the controller refuses reports for cancelled attempts with 409 and lists them in heartbeat replies"}, "task": ref("Assignment"), "more": {"type":"array","items":ref("Assignment"),"description":"the rest of the batch, as in PollResponse"}, "refused": {"type":"array","items":uuidt,"description":"tasks of `also` whose reports were refused (stale leases): their results are discarded"}, "receipt": dict(u64, description="A final report answered with its next task before it was on disk: its journal record number. The worker keeps the report until a reply's `durable` of the same run reaches it, and sends it again before it polls otherwise."), "durable": ref("Durability")}, ["accepted"]),
 "DeregisterRequest": obj({"reason": string}),
 "Target": {"description": "\"any\", {\"worker\": UUID} or {\"device\": N}", "oneOf": [{"type":"string","enum":["any"]}, dict(obj({"worker": uuidt}, ["worker"]), additionalProperties=False), dict(obj({"device": i32}, ["device"]), additionalProperties=False)]},
 "TaskSpec": dict(obj({"init": {"allOf": [ref("InitPart")], "nullable": True}, "commands": {"type":"array","items":ref("Command")}, "target": ref("Target"), "priority": i32, "label": {"type":"string","maxLength":256,"nullable":True}, "max_attempts": {"type": "integer", "minimum": 1, "maximum": 4294967295, "nullable": True}, "timeout_s": {"type":"number","minimum":0,"exclusiveMinimum":True,"maximum":1e9,"nullable":True}}, ["commands"]),
   description="A task needs at least one command, in init or in commands.",
   anyOf=[{"type": "object", "required": ["init"], "properties": {"init": {"type": "object"}}}, {"type": "object", "properties": {"commands": {"type": "array", "minItems": 1}}}]),
 "BatchSubmit": obj({"tasks": {"type":"array","items":ref("TaskSpec"),"maxItems":10000}}, ["tasks"]),
 "SubmitResponse": obj({"id": uuidt}, ["id"]),
 "BatchSubmitResponse": obj({"ids": {"type":"array","items":uuidt}}, ["ids"]),
 "WaitRequest": obj({"ids": {"type":"array","items":uuidt,"minItems":1,"maxItems":10000,"description":"repeats count once"}, "timeout_s": {"type":"number","minimum":0,"maximum":300,"description":"hold at most this long (default 30)"}}, ["ids"]),
 "WaitResponse": obj({"completed": {"type":"array","items":uuidt}, "unsuccessful": {"type":"array","items":ref("TaskDetail"),"description":"failed or cancelled, in full"}, "pending": {"type":"array","items":uuidt,"description":"not terminal when the hold passed"}, "forgotten": {"type":"array","items":uuidt,"description":"finished, but retention dropped their record (no state directory)"}}, ["completed","unsuccessful","pending"]),
 "TaskState": {"type":"string","enum":["queued","assigned","running","completed","failed","cancelled"]},
 "AttemptRecord": obj({"attempt": u64, "lease": u64, "worker_id": uuidt, "hostname": string, "assigned_unix_ms": u64, "started_unix_ms": u64, "finished_unix_ms": u64,
    "outcome": {"type":"string","enum":["active","completed","failed","worker_lost","timed_out","released","cancelled"]}, "error": string}, ["attempt","lease","worker_id","hostname","assigned_unix_ms","outcome"]),
 "TaskDetail": obj({"id": uuidt, "label": string, "state": ref("TaskState"), "attempt": u64, "worker_id": nullable(uuidt), "target": ref("Target"), "priority": i32,
    "created_unix_ms": u64, "assigned_unix_ms": nullable(u64), "started_unix_ms": nullable(u64), "finished_unix_ms": nullable(u64), "result": {}, "error": nullable(string), "progress": ref("Progress"),
    "history": {"type":"array","items":ref("AttemptRecord")}}, ["id","state","attempt","worker_id","target","priority","created_unix_ms","assigned_unix_ms","started_unix_ms","finished_unix_ms","result","error","history"]),
 "WorkerInfo": obj({"id": uuidt, "device": i32, "hostname": string, "state": {"type":"string","enum":["idle","busy","offline"]}, "current_task": nullable(uuidt), "last_heartbeat_ms_ago": u64,
    "registered_unix_ms": u64, "capabilities": ref("Capabilities"), "worker_version": string, "held_fingerprint": nullable(string), "tasks_completed": u64, "tasks_failed": u64, "spawn_id": string, "pid": u64},
    ["id","device","hostname","state","current_task","last_heartbeat_ms_ago"]),
 "ControllerStatus": obj({"version": string, "protocol_version": u64, "uptime_ms": u64,
    "workers": obj({"idle": u64, "busy": u64, "offline": u64}, ["idle","busy","offline"]),
    "tasks": obj({k: u64 for k in ["queued","assigned","running","completed","failed","cancelled"]}, ["queued","assigned","running","completed","failed","cancelled"]),
    "queue_length": u64, "parked_polls": u64, "stale_reports_refused": u64, "batched_assignments": dict(u64, description="tasks handed out as the rest of a batch since the controller started"), "poll_hold_ms": u64, "heartbeat_timeout_ms": u64, "task_timeout_ms": u64, "max_attempts": u64,
    "provisioning": obj({"mode": string, "max_workers": u64, "submitted_total": u64, "failure_streak": u64, "paused_for_ms": u64, "last_error": string,
        "jobs": {"type": "array", "items": obj({"id": string, "state": {"type": "string", "enum": ["pending", "starting", "serving", "unknown"]}, "age_ms": u64}, ["id", "state", "age_ms"])}},
        ["mode", "max_workers", "jobs", "submitted_total", "failure_streak"])},
    ["version","protocol_version","uptime_ms","workers","tasks","queue_length","parked_polls","stale_reports_refused"]),
 "ConsoleLines": obj({"total": u64, "first_kept": u64, "lines": {"type":"array","items":ref("ConsoleLine")}}, ["total","first_kept","lines"]),
 "SelectionThresholds": dict(obj({k: {"type": "number", "minimum": 0, "nullable": True} for k in ["max_resolution_A", "min_defocus_um", "max_defocus_um", "max_astigmatism_um", "max_motion_A"]}),
    additionalProperties=False, description="Thresholds a movie must all meet (absent or null: no limit); mean defocus (U+V)/2, astigmatism |U-V|, total motion = the trajectory's length in Å. min_defocus_um above max_defocus_um is refused."),
 "SelectionSummary": obj({"thresholds": ref("SelectionThresholds"), "total": u64, "selected": u64,
    "rejected": {"type": "object", "description": "movies failing each threshold", "properties": {k: u64 for k in ["resolution", "defocus", "astigmatism", "motion"]}, "additionalProperties": False},
    "star": string}, ["thresholds", "total", "selected", "rejected", "star"]),
 "SessionInfo": obj({"output": string, "thresholds": ref("SelectionThresholds"), "watching": {"type": "boolean"}}, ["output", "thresholds", "watching"]),
}
q = lambda n, s, d: p(n, "query", s, d, False)
paths = {
 "/api/workers/register": {"post": op("Register a worker (enrollment token)", {**ok("RegisterResponse"), **errs("400","401","413")}, "RegisterRequest",
    desc="Bearer: the enrollment token (or the admin token). A protocol_version other than the controller's is refused with 400 code protocol_version_mismatch naming both versions.")},
 "/api/workers/status": {"get": op("Controller summary", {**ok("ControllerStatus"), **errs("401")})},
 "/api/workers/active": {"get": op("Workers (offline ones with ?all=1)", {**ok({"type":"array","items":ref("WorkerInfo")}), **errs("400","401")}, params=[q("all", string, "1 to include offline workers")])},
 "/api/workers/tasks": {"get": op("Tasks in submission order", {**ok({"type":"array","items":ref("TaskDetail")}), **errs("400","401")},
    params=[q("state", ref("TaskState"), "only tasks in this state"), q("offset", uq, "skip this many"), q("limit", uq, "at most this many (default 1000)")])},
 "/api/workers/tasks/{id}": {"get": op("One task with its attempt history", {**ok("TaskDetail"), **errs("401","404")}, params=[tid])},
 "/api/workers/{id}/poll": {"get": op("Long-poll for work (worker token)", {**ok("PollResponse"), "204": {"description": "hold expired without work, or the worker went offline/left"}, **errs("401","404","503")}, params=[wid],
    desc="Held until work arrives (answered at once) or --poll-hold passes (204). 404 unknown_worker: register again.")},
 "/api/workers/{id}/heartbeat": {"post": op("Heartbeat (worker token)", {**ok("HeartbeatResponse"), **errs("400","401","404","413")}, "HeartbeatRequest", [wid],
    desc="Ships new console lines. The reply lists tasks the worker must stop (cancelled, timed out or re-assigned).")},
 "/api/workers/{id}/tasks/{taskId}/status": {"post": op("Report a task's status (worker token)", {**ok("StatusResponse"), **errs("400","401","404","409","413")}, "StatusUpdate", [wid, p("taskId", desc="task id (UUID)")],
    desc="409 stale_lease when the lease is not the task's current one on this worker; nothing changes then. With want_next on a terminal report the reply may carry the next task.")},
 "/api/workers/{id}/deregister": {"post": op("Leave (worker token); the current task is re-queued at once", {**ok(obj({"ok": {"type":"boolean"}})), **errs("400","401","404")}, "DeregisterRequest", [wid])},
 "/api/workers/{id}/console": {"get": op("A worker's console lines", {**ok("ConsoleLines"), **errs("400","401","404")},
    desc="Which lines: first=N, last=N, start=A&end=B (end exclusive), or none of them for all lines; any other combination is refused with 400.",
    params=[wid, {"name": "lines", "in": "query", "required": False, "style": "form", "explode": True, "description": "one of the four selections",
        "schema": {"oneOf": [
            {"type": "object", "properties": {"first": uq}, "required": ["first"], "additionalProperties": False},
            {"type": "object", "properties": {"last": uq}, "required": ["last"], "additionalProperties": False},
            {"type": "object", "properties": {"start": uq, "end": uq}, "required": ["start", "end"], "additionalProperties": False},
            {"type": "object", "maxProperties": 0}]}}])},
 "/api/workers/{id}/console/count": {"get": op("Number of lines a worker has logged", {**ok(obj({"count": u64}, ["count"])), **errs("401","404")}, params=[wid])},
 "/api/tasks": {"post": op("Submit a work package", {**ok("SubmitResponse", "201", "created"), **errs("400","401","409","413")}, "TaskSpec")},
 "/api/tasks/batch": {"post": op("Submit many work packages (all or none)", {**ok("BatchSubmitResponse", "201", "created"), **errs("400","401","409","413")}, "BatchSubmit")},
 "/api/tasks/{id}/cancel": {"post": op("Cancel a queued or running task", {**ok(obj({"id": uuidt, "state": ref("TaskState")}, ["id","state"])), **errs("401","404","409")}, params=[tid],
    desc="A running task's worker is told on its next heartbeat and stops the command.")},
 "/api/tasks/{id}/wait": {"get": op("Wait for a task to finish", {**ok("TaskDetail"), **errs("400","401","404")}, params=[tid, q("timeout_s", {"type":"number","minimum":0,"maximum":300}, "hold at most this long (default 30, max 300); the reply then shows a non-terminal state")])},
 "/api/tasks/wait": {"post": op("Wait for many tasks (up to 10,000) in one call: answered once all are terminal, or at the hold with the pending ones named (view token)", {**ok("WaitResponse"), **errs("400","401","404","413")}, "WaitRequest")},
 "/metrics": {"get": op("Prometheus metrics (view token)", {"200": {"description": "the Prometheus text exposition format 0.0.4 (docs/monitoring.md)", "content": {"text/plain": {"schema": {"type":"string"}}}}, **errs("400","401")},
    desc="Workers, tasks and the queue by state, parked polls, stale reports, dispatch latency and task duration histograms, movies by outcome, provisioned jobs by state.")},
 "/api/session": {"get": op("The preprocessing session this controller serves (404 no_session: none)", {**ok("SessionInfo"), **errs("400","401","404")})},
 "/api/session/movies/{name}/{image}": {"get": op("A processed movie's thumbnail or power spectrum (PNG)", {"200": {"description": "PNG", "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}, **errs("400","401","404")},
    params=[p("name", desc="the movie's name (its file stem, the task's label)"), p("image", schema={"type": "string", "enum": ["thumbnail", "spectrum"]}, desc="thumbnail: the average, downsampled; spectrum: the power spectrum with the fitted CTF's zeros on its right half")])},
 "/api/session/selection": {"post": op("Select the movies passing thresholds (admin token)", {**ok("SelectionSummary"), **errs("400","401","404","413")}, "SelectionThresholds",
    desc="Writes micrographs_ctf_selected.star in the session's output directory and saves the thresholds with the session (selection.json).")},
 "/": {"get": op("The status page (no token; its script asks for the view token)", {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type":"string"}}}}, **errs("400")}, public=True)},
 "/page.js": {"get": op("The status page's script (no token)", {"200": {"description": "JavaScript", "content": {"text/javascript": {"schema": {"type":"string"}}}}, **errs("400")}, public=True)},
 "/page.css": {"get": op("The status page's style sheet (no token)", {"200": {"description": "CSS", "content": {"text/css": {"schema": {"type":"string"}}}}, **errs("400")}, public=True)},
 "/api/health": {"get": op("Liveness (no token)", ok(obj({"ok": {"type":"boolean"}, "version": string, "protocol_version": u64})), public=True)},
 "/api/openapi.json": {"get": op("This document (no token)", {"200": {"description": "OpenAPI 3 document", "content": {"application/json": {"schema": {"type":"object"}}}}}, public=True)},
}
for path, item in paths.items():
    for m, o in item.items():
        o["responses"].setdefault("500", dict(E, description="internal error (the controller keeps running)"))
        o["responses"].setdefault("503", dict(E, description="shutting down"))
# The request types that refuse unknown fields (serde deny_unknown_fields in common/src/protocol.rs).
for name in ("InitPart", "TaskSpec", "BatchSubmit"):
    schemas[name]["additionalProperties"] = False
doc = {"openapi": "3.0.3",
 "info": {"title": "warp-controller API", "version": "0.1.0", "description": "Pull protocol between the controller and its workers, plus submission, monitoring and console endpoints. Errors are ApiError bodies. Tokens (Bearer): the enrollment token registers workers and nothing else; the admin token may call every endpoint; the optional view token the read-only monitoring endpoints (status, workers, tasks, consoles, waits); the per-worker token from registration that worker's own endpoints. A 405 answer carries Allow."},
 "servers": [{"url": "/"}],
 "security": [{"bearer": []}],
 "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}, "schemas": schemas},
 "paths": paths}
print(json.dumps(doc, indent=2))
