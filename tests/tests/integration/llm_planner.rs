//! The LLM planner against a stub chat-completions server on 127.0.0.1:
//! what it sends (path, bearer key, model, messages, JSON mode), the plan
//! it returns validated, and a precise error for every way the exchange
//! can go wrong, none of which shows the API key. No database needed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use llm_planner::{LlmConfig, LlmError, LlmPlanner};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const KEY: &str = "sk-test-9f8e7d6c5b4a";
const MODEL: &str = "qwen2.5-7b-instruct";
const REQUEST: &str = "back up the database then run migration add_user_roles";

/// A request the stub received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    /// Names in lower case.
    headers: Vec<(String, String)>,
    body: Value,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

enum Reply {
    Answer {
        status: u16,
        body: String,
    },
    /// No Content-Length: the body runs to the end of the connection.
    Unsized {
        body: String,
    },
    /// Keep the connection open and never answer.
    Silence,
}

/// A chat-completions answer whose message content is `content`.
fn chat(content: &str) -> Reply {
    Reply::Answer {
        status: 200,
        body: answer_body(content),
    }
}

fn answer_body(content: &str) -> String {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": MODEL,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    })
    .to_string()
}

struct Stub {
    base_url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Stub {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A minimal HTTP/1.1 server on 127.0.0.1:0 answering each request with
/// `reply(request)`, one request per connection.
async fn stub(reply: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Stub {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let reply = Arc::new(reply);
    let recorded = seen.clone();
    let server = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let (reply, recorded) = (reply.clone(), recorded.clone());
            connections.spawn(async move {
                let Some(request) = read_request(socket).await else {
                    return;
                };
                let (mut socket, request) = request;
                recorded.lock().unwrap().push(request.clone());
                match reply(&request) {
                    Reply::Answer { status, body } => {
                        let head = format!(
                            "HTTP/1.1 {status} Stub\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        socket.write_all(head.as_bytes()).await.unwrap();
                        socket.write_all(body.as_bytes()).await.unwrap();
                        let _ = socket.shutdown().await;
                    }
                    Reply::Unsized { body } => {
                        let head = "HTTP/1.1 200 Stub\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n";
                        socket.write_all(head.as_bytes()).await.unwrap();
                        // Written in pieces, as a slow model server would.
                        for piece in body.as_bytes().chunks(8 * 1024) {
                            if socket.write_all(piece).await.is_err() {
                                return; // the client stopped reading
                            }
                        }
                        let _ = socket.shutdown().await;
                    }
                    Reply::Silence => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        drop(socket);
                    }
                }
            });
        }
    });
    Stub {
        base_url,
        seen,
        server,
    }
}

async fn read_request(mut socket: TcpStream) -> Option<(TcpStream, Seen)> {
    let mut buffer = Vec::new();
    let head_end = loop {
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buffer[..head_end].to_vec()).expect("an ASCII request head");
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap().split(' ');
    let method = request_line.next().unwrap().to_owned();
    let path = request_line.next().unwrap().to_owned();
    assert_eq!(request_line.next(), Some("HTTP/1.1"));
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (name, value) = l.split_once(':').expect("a header line");
            (name.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .expect("the client sends Content-Length")
        .1
        .parse()
        .unwrap();
    let mut body = buffer[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let body: Value = serde_json::from_slice(&body).expect("the request body is JSON");
    Some((
        socket,
        Seen {
            method,
            path,
            headers,
            body,
        },
    ))
}

fn config(base_url: &str) -> LlmConfig {
    LlmConfig {
        base_url: base_url.to_owned(),
        model: MODEL.to_owned(),
        api_key: Some(KEY.to_owned()),
        timeout_ms: 5_000,
        response_bytes_max: 64 * 1024,
    }
}

/// The catalogue a server derives from its agents' operations.
fn declared() -> domain::workflow::Catalogue {
    let config = server::Config::from_settings(server::Settings {
        database_url: Some("postgres://dbswarm@127.0.0.1:1/never_connected".into()),
        ..Default::default()
    })
    .unwrap();
    server::catalogue(&config).unwrap()
}

async fn plan_with(config: LlmConfig) -> Result<domain::workflow::Plan, LlmError> {
    LlmPlanner::new(config).unwrap().plan(REQUEST, &declared()).await
}

/// The error of a planning that must fail; its Display and Debug never
/// show the key.
async fn failure(config: LlmConfig) -> LlmError {
    let error = plan_with(config).await.expect_err("the planning fails");
    assert_no_key(&error);
    error
}

fn assert_no_key(error: &LlmError) {
    assert!(!error.to_string().contains(KEY), "the key in: {error}");
    assert!(!format!("{error:?}").contains(KEY), "the key in: {error:?}");
}

fn migration_plan() -> String {
    json!({
        "name": "Backup then migrate",
        "description": "Back up the database, then apply add_user_roles.",
        "tasks": [
            {"id": "backup", "agent": "backup", "operation": "create", "timeout": "30m"},
            {"id": "migrate", "agent": "schema", "operation": "apply",
             "params": {"migration": "add_user_roles"}, "dependencies": ["backup"],
             "compensation": {"operation": "rollback", "params": {"migration": "add_user_roles"}},
             "retries": 1}
        ]
    })
    .to_string()
}

#[tokio::test]
async fn a_valid_plan_comes_back_validated_and_the_request_is_what_the_protocol_expects() {
    let stub = stub(|_| chat(&format!("```json\n{}\n```", migration_plan()))).await;

    let plan = plan_with(config(&stub.base_url)).await.unwrap();

    assert_eq!(plan.name, "Backup then migrate");
    let steps: Vec<(&str, &str, &str)> = plan
        .tasks
        .iter()
        .map(|t| (t.id.as_str(), t.agent.as_str(), t.operation.as_str()))
        .collect();
    assert_eq!(
        steps,
        [("backup", "backup", "create"), ("migrate", "schema", "apply")]
    );
    assert_eq!(plan.tasks[1].dependencies, vec![0]);
    assert_eq!(plan.tasks[0].timeout_ms, 30 * 60 * 1000);
    assert_eq!(plan.tasks[1].retries, 1);
    assert_eq!(plan.tasks[1].params["migration"], "add_user_roles");
    assert_eq!(plan.tasks[1].compensation.as_ref().unwrap().operation, "rollback");

    let seen = stub.seen();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(
        request.header("host"),
        Some(
            stub.base_url
                .trim_start_matches("http://")
                .trim_end_matches("/v1")
        )
    );
    let body = &request.body;
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["temperature"], 0);
    assert_eq!(body["response_format"], json!({"type": "json_object"}));
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["role"], "system");
    let prompt = messages[0]["content"].as_str().unwrap();
    for line in [
        "- backup.create:",
        "- schema.apply:",
        "object (string, required)",
        r#"{"error": "#,
    ] {
        assert!(prompt.contains(line), "{line} is not in the prompt");
    }
    assert_eq!(messages[1], json!({"role": "user", "content": REQUEST}));
}

#[tokio::test]
async fn content_that_is_not_json_is_reported_with_the_parse_error_and_the_answer() {
    let stub = stub(|_| chat("Sure! First back up, then migrate: {tasks: [backup, migrate]}")).await;

    let error = failure(config(&stub.base_url)).await;

    let LlmError::NotAPlan { reason, excerpt } = &error else {
        panic!("expected NotAPlan, got {error:?}")
    };
    assert!(
        reason.starts_with("not JSON: expected value at line 1 column 1"),
        "{reason}"
    );
    assert!(excerpt.starts_with("Sure! First back up"), "{excerpt}");
    assert!(
        error
            .to_string()
            .starts_with("the model's answer is not a plan: not JSON"),
        "{error}"
    );
}

#[tokio::test]
async fn a_plan_with_an_unknown_agent_is_refused_naming_it() {
    let stub = stub(|_| {
        chat(
            &json!({"name": "x", "tasks": [
                {"id": "backup", "agent": "backup", "operation": "create"},
                {"id": "email", "agent": "mailer", "operation": "send", "dependencies": ["backup"]}
            ]})
            .to_string(),
        )
    })
    .await;

    let error = failure(config(&stub.base_url)).await;

    let LlmError::InvalidPlan(invalid) = &error else {
        panic!("expected InvalidPlan, got {error:?}")
    };
    assert_eq!(invalid.problems.len(), 1, "{:?}", invalid.problems);
    assert!(
        invalid.problems[0].starts_with("task 'email': unknown agent 'mailer' (known: backup, cache,"),
        "{}",
        invalid.problems[0]
    );
    assert!(error.to_string().contains("unknown agent 'mailer'"), "{error}");
}

#[tokio::test]
async fn http_500_is_reported_with_the_status_the_url_and_the_body() {
    let stub = stub(|_| Reply::Answer {
        status: 500,
        body: r#"{"error": {"message": "CUDA out of memory", "type": "server_error"}}"#.to_owned(),
    })
    .await;

    let error = failure(config(&stub.base_url)).await;

    let LlmError::Status { url, status, body } = &error else {
        panic!("expected Status, got {error:?}")
    };
    assert_eq!(*status, 500);
    assert_eq!(url, &format!("{}/chat/completions", stub.base_url));
    assert!(body.contains("CUDA out of memory"), "{body}");
    let shown = error.to_string();
    assert!(
        shown.contains("HTTP 500") && shown.contains(url.as_str()),
        "{shown}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_within_the_bound() {
    let stub = stub(|_| Reply::Silence).await;
    let config = LlmConfig {
        timeout_ms: 300,
        ..config(&stub.base_url)
    };

    let started = Instant::now();
    let error = failure(config).await;
    let elapsed = started.elapsed();

    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(
        error,
        LlmError::Timeout {
            url: format!("{}/chat/completions", stub.base_url),
            timeout_ms: 300
        }
    );
    assert_eq!(stub.seen().len(), 1, "the request reached the server");
    assert!(
        error.to_string().contains("did not answer within 300 ms"),
        "{error}"
    );
}

#[tokio::test]
async fn a_refused_connection_names_the_url() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let base_url = format!("http://127.0.0.1:{port}/v1");

    let error = failure(config(&base_url)).await;

    let LlmError::Connect { url, reason } = &error else {
        panic!("expected Connect, got {error:?}")
    };
    assert_eq!(url, &format!("{base_url}/chat/completions"));
    assert!(reason.to_lowercase().contains("refused"), "{reason}");
}

#[tokio::test]
async fn an_answer_larger_than_the_bound_is_refused() {
    let stub = stub(|_| chat(&" ".repeat(100_000))).await;

    let error = failure(config(&stub.base_url)).await;

    assert_eq!(
        error,
        LlmError::TooLarge {
            url: format!("{}/chat/completions", stub.base_url),
            limit: 64 * 1024
        }
    );
}

#[tokio::test]
async fn an_answer_without_a_length_is_read_only_up_to_the_bound() {
    let big = stub(|_| Reply::Unsized {
        body: answer_body(&" ".repeat(1_000_000)),
    })
    .await;

    let error = failure(config(&big.base_url)).await;

    assert!(
        matches!(&error, LlmError::TooLarge { limit: 65_536, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("response_bytes_max"), "{error}");

    // The same body within the bound is read to its end.
    let small = stub(|_| Reply::Unsized {
        body: answer_body(&migration_plan()),
    })
    .await;
    assert_eq!(plan_with(config(&small.base_url)).await.unwrap().tasks.len(), 2);
}

#[tokio::test]
async fn an_https_url_speaks_tls_and_a_failed_handshake_names_the_url() {
    // A server that answers the ClientHello in plain HTTP.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut hello = [0u8; 5];
        socket.read_exact(&mut hello).await.unwrap();
        assert_eq!(hello[0], 0x16, "a TLS handshake record");
        socket
            .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .await
            .unwrap();
    });
    let base_url = format!("https://127.0.0.1:{port}/v1");

    let error = failure(config(&base_url)).await;

    let LlmError::Tls { url, reason } = &error else {
        panic!("expected Tls, got {error:?}")
    };
    assert_eq!(url, &format!("{base_url}/chat/completions"));
    assert!(reason.contains("plain HTTP"), "{reason}");
    server.await.unwrap();
}

#[tokio::test]
async fn the_models_refusal_is_passed_on() {
    let stub = stub(|_| chat(r#"{"error": "no agent can send e-mail"}"#)).await;

    let error = failure(config(&stub.base_url)).await;

    assert_eq!(error, LlmError::Refused("no agent can send e-mail".to_owned()));
}

#[tokio::test]
async fn a_body_that_is_not_json_or_has_no_choices_is_named() {
    let html = stub(|_| Reply::Answer {
        status: 200,
        body: "<html>captive portal</html>".to_owned(),
    })
    .await;
    let error = failure(config(&html.base_url)).await;
    assert!(
        matches!(&error, LlmError::NotJson { excerpt, .. } if excerpt.contains("captive portal")),
        "{error:?}"
    );

    let empty = stub(|_| Reply::Answer {
        status: 200,
        body: r#"{"id": "x", "choices": []}"#.to_owned(),
    })
    .await;
    let error = failure(config(&empty.base_url)).await;
    assert!(matches!(&error, LlmError::NoChoices { .. }), "{error:?}");
}

#[tokio::test]
async fn a_server_refusing_json_object_is_asked_with_a_json_schema_and_no_key_is_sent_without_one() {
    // What LM Studio answers to response_format json_object.
    let stub = stub(|request| {
        if request.body["response_format"]["type"] == "json_object" {
            Reply::Answer {
                status: 400,
                body: r#"{"error":"'response_format.type' must be 'json_schema' or 'text'"}"#.to_owned(),
            }
        } else {
            chat(&migration_plan())
        }
    })
    .await;
    let config = LlmConfig {
        api_key: None,
        ..config(&stub.base_url)
    };

    let plan = plan_with(config).await.unwrap();

    assert_eq!(plan.tasks.len(), 2);
    let seen = stub.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body["response_format"]["type"], "json_schema");
    assert_eq!(
        seen[1].body["response_format"]["json_schema"]["schema"],
        json!({"type": "object"})
    );
    assert!(seen.iter().all(|r| r.header("authorization").is_none()));
}

#[tokio::test]
async fn the_api_key_never_appears_in_an_error_even_when_the_server_echoes_it() {
    // A server that echoes the Authorization header in its 401 body, and a
    // model that puts the key in its answer, its refusal and its plan.
    let echo = stub(|request| Reply::Answer {
        status: 401,
        body: format!(
            r#"{{"error": "invalid key: {}"}}"#,
            request.header("authorization").unwrap()
        ),
    })
    .await;
    let error = failure(config(&echo.base_url)).await;
    assert!(
        matches!(&error, LlmError::Status { status: 401, body, .. } if body.contains("invalid key: Bearer [redacted]")),
        "{error:?}"
    );

    for content in [
        format!("my key is {KEY}"),
        format!(r#"{{"error": "will not use {KEY}"}}"#),
        json!({"name": "x", "tasks": [{"id": "a", "agent": KEY, "operation": "create"}]}).to_string(),
        json!({"name": "x", "tasks": [{"id": "a", "agent": "backup", "operation": "create",
                                       "params": {"database": KEY, KEY: 1}}]})
        .to_string(),
    ] {
        let model = stub(move |_| chat(&content)).await;
        failure(config(&model.base_url)).await;
    }

    // A key in the URL is refused at configuration without showing it.
    let error = LlmPlanner::new(LlmConfig {
        base_url: format!("http://user:{KEY}@127.0.0.1:1/v1"),
        ..config("http://unused")
    })
    .unwrap_err();
    assert_no_key(&error);
    assert!(error.to_string().contains("http://127.0.0.1:1/v1"), "{error}");

    // Timeouts and refused connections too.
    let silent = stub(|_| Reply::Silence).await;
    failure(LlmConfig {
        timeout_ms: 200,
        ..config(&silent.base_url)
    })
    .await;
    failure(config("http://127.0.0.1:1/v1")).await;
}

/// Through `Workflows.Execute`: the configured LLM plans plain English,
/// its plan validated; when it fails the rules plan; when both fail the
/// answer says why for each.
#[tokio::test]
async fn execute_plans_with_the_llm_and_falls_back_to_the_rules() {
    use api::proto;
    // A stub that plans "migrate" requests and answers nonsense otherwise
    let stub = stub(|seen| {
        let asked = seen.body["messages"][1]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if asked.contains("migrate") {
            chat(&migration_plan())
        } else {
            chat("I would rather not.")
        }
    })
    .await;
    let db = tests::TestDb::create().await;
    let mut settings = tests::with_workflows(tests::settings_for(&db));
    settings.planner_llm_base_url = Some(stub.base_url.clone());
    settings.planner_llm_model = Some(MODEL.into());
    settings.planner_llm_api_key = Some(KEY.into());
    let server = tests::TestServer::start(settings).await;
    let mut client = crate::orchestration::workflows_client(&server).await;
    let dry = |text: &str| proto::ExecuteRequest {
        request: Some(proto::execute_request::Request::Operation(text.into())),
        dry_run: true,
        ..Default::default()
    };
    // The LLM plans what the rules do not understand
    let planned = client
        .execute(dry("please migrate the app to the roles schema safely"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(planned.planner, "llm");
    let plan: Value = serde_json::from_str(&planned.plan_json).unwrap();
    assert_eq!(plan["tasks"][1]["params"]["migration"], "add_user_roles");
    // Its nonsense is refused and the rules plan instead
    let fallback = client
        .execute(dry("back up the database app"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fallback.planner, "rules");
    // What the rules plan but no agent serves is refused, naming what is served
    let unserved = client
        .execute(dry("check integrity of orders"))
        .await
        .unwrap_err();
    assert_eq!(unserved.code(), tonic::Code::InvalidArgument);
    assert!(
        unserved
            .message()
            .contains("integrity.check, which no agent serves"),
        "{}",
        unserved.message()
    );
    // Neither understands: both reasons, never the key
    let neither = client.execute(dry("make everything faster")).await.unwrap_err();
    assert_eq!(neither.code(), tonic::Code::InvalidArgument);
    assert!(
        neither.message().contains("the planner understands"),
        "{}",
        neither.message()
    );
    assert!(
        neither.message().contains("the LLM planner failed too"),
        "{}",
        neither.message()
    );
    assert!(!neither.message().contains(KEY));
    assert!(
        stub.seen()
            .iter()
            .all(|s| s.header("authorization") == Some(&format!("Bearer {KEY}")))
    );
    server.stop().await;
    db.drop_database().await;
}
