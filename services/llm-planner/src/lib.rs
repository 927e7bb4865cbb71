//! The optional LLM planner: a request in plain English becomes a plan by
//! asking a model behind an OpenAI-compatible chat-completions endpoint
//! (OpenAI, vLLM, Ollama, LM Studio, ...).
//!
//! The system prompt describes the plan JSON exactly and lists every agent,
//! operation and parameter of the catalogue; the model answers with the plan
//! or with `{"error": "..."}`. What it answers is parsed as a [`PlanSpec`]
//! and validated with [`Plan::validate`] like any other plan: the model can
//! only propose, never bypass validation.
//!
//! One HTTP/1.1 connection per request (hyper over a `TcpStream`, rustls
//! for `https://`), the whole exchange under `timeout_ms`, the answer read
//! to at most `response_bytes_max` bytes. Every failure is an [`LlmError`]
//! that names what went wrong and where; the API key is sent only in the
//! `Authorization` header and is removed from every error text (a server
//! may echo it back).

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use domain::workflow::Catalogue;
use domain::workflow::plan::{Plan, PlanError, PlanSpec, RETRIES_MAX, TASK_ID_BYTES_MAX, TASKS_MAX};
use domain::workflow::planner::REQUEST_BYTES_MAX;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, pki_types::ServerName};

/// A sensible bound on one planning exchange (local models can be slow).
pub const TIMEOUT_MS_DEFAULT: u64 = 60_000;
/// A sensible bound on a chat-completions answer.
pub const RESPONSE_BYTES_MAX_DEFAULT: usize = 1024 * 1024;
/// How much of an unexpected HTTP body or model answer an error shows.
pub const EXCERPT_BYTES_MAX: usize = 512;

const REDACTED: &str = "[redacted]";
const USER_AGENT: &str = concat!("dbswarm/", env!("CARGO_PKG_VERSION"));

/// Where the model is and how long to wait for it.
#[derive(Clone, PartialEq, Eq)]
pub struct LlmConfig {
    /// The API root, e.g. `http://127.0.0.1:1234/v1` or
    /// `https://api.openai.com/v1`; `/chat/completions` is appended.
    pub base_url: String,
    pub model: String,
    /// Sent as `Authorization: Bearer <key>`; never shown.
    pub api_key: Option<String>,
    /// The whole exchange: connect, TLS, request, answer.
    pub timeout_ms: u64,
    /// The largest answer read.
    pub response_bytes_max: usize,
}

impl fmt::Debug for LlmConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| REDACTED))
            .field("timeout_ms", &self.timeout_ms)
            .field("response_bytes_max", &self.response_bytes_max)
            .finish()
    }
}

/// Why the LLM planner produced no plan. Each names what to look at; none
/// contains the API key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    #[error("LLM planner configuration: {0}")]
    Config(String),
    #[error("the request is empty")]
    EmptyRequest,
    #[error("the request is {0} bytes; at most {REQUEST_BYTES_MAX}")]
    RequestTooLong(usize),
    #[error("cannot connect to the LLM at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("TLS with the LLM at {url} failed: {reason}")]
    Tls { url: String, reason: String },
    #[error("the LLM at {url} did not answer within {timeout_ms} ms (timeout_ms)")]
    Timeout { url: String, timeout_ms: u64 },
    #[error("the HTTP exchange with the LLM at {url} failed: {reason}")]
    Http { url: String, reason: String },
    #[error("the LLM at {url} answered HTTP {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("the LLM at {url} answered more than {limit} bytes (response_bytes_max)")]
    TooLarge { url: String, limit: usize },
    #[error("the LLM at {url} answered with something that is not JSON ({reason}): {excerpt}")]
    NotJson {
        url: String,
        reason: String,
        excerpt: String,
    },
    #[error("the LLM at {url} reported an error: {message}")]
    Api { url: String, message: String },
    #[error("the LLM at {url} answered without choices: {excerpt}")]
    NoChoices { url: String, excerpt: String },
    #[error("the LLM at {url} answered without choices[0].message.content (finish_reason: {finish_reason})")]
    NoContent { url: String, finish_reason: String },
    #[error("the model's answer is not a plan: {reason}; the answer: {excerpt}")]
    NotAPlan { reason: String, excerpt: String },
    #[error("the model's plan is invalid: {}", .0.problems.join("; "))]
    InvalidPlan(PlanError),
    #[error("the model could not plan the request: {0}")]
    Refused(String),
}

impl LlmError {
    /// The same error with every occurrence of `secret` replaced.
    fn redact(self, secret: &str) -> LlmError {
        if secret.is_empty() {
            return self;
        }
        let r = |s: String| s.replace(secret, REDACTED);
        match self {
            LlmError::Config(why) => LlmError::Config(r(why)),
            LlmError::Connect { url, reason } => LlmError::Connect {
                url: r(url),
                reason: r(reason),
            },
            LlmError::Tls { url, reason } => LlmError::Tls {
                url: r(url),
                reason: r(reason),
            },
            LlmError::Timeout { url, timeout_ms } => LlmError::Timeout {
                url: r(url),
                timeout_ms,
            },
            LlmError::Http { url, reason } => LlmError::Http {
                url: r(url),
                reason: r(reason),
            },
            LlmError::Status { url, status, body } => LlmError::Status {
                url: r(url),
                status,
                body: r(body),
            },
            LlmError::TooLarge { url, limit } => LlmError::TooLarge { url: r(url), limit },
            LlmError::NotJson { url, reason, excerpt } => LlmError::NotJson {
                url: r(url),
                reason: r(reason),
                excerpt: r(excerpt),
            },
            LlmError::Api { url, message } => LlmError::Api {
                url: r(url),
                message: r(message),
            },
            LlmError::NoChoices { url, excerpt } => LlmError::NoChoices {
                url: r(url),
                excerpt: r(excerpt),
            },
            LlmError::NoContent { url, finish_reason } => LlmError::NoContent {
                url: r(url),
                finish_reason: r(finish_reason),
            },
            LlmError::NotAPlan { reason, excerpt } => LlmError::NotAPlan {
                reason: r(reason),
                excerpt: r(excerpt),
            },
            LlmError::InvalidPlan(PlanError { problems }) => LlmError::InvalidPlan(PlanError {
                problems: problems.into_iter().map(r).collect(),
            }),
            LlmError::Refused(why) => LlmError::Refused(r(why)),
            e @ (LlmError::EmptyRequest | LlmError::RequestTooLong(_)) => e,
        }
    }
}

/// Plans requests by asking the configured model.
pub struct LlmPlanner {
    config: LlmConfig,
    endpoint: Endpoint,
    /// `Bearer <key>`, marked sensitive.
    authorization: Option<HeaderValue>,
    /// Present for `https://` endpoints.
    tls: Option<TlsConnector>,
}

impl fmt::Debug for LlmPlanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmPlanner")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// How the model is asked for JSON. OpenAI, vLLM and Ollama take
/// `json_object`; LM Studio refuses it ("'response_format.type' must be
/// 'json_schema' or 'text'") and takes a JSON schema of any object, which
/// means the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResponseFormat {
    JsonObject,
    JsonSchemaObject,
}

impl ResponseFormat {
    fn to_json(self) -> Value {
        match self {
            ResponseFormat::JsonObject => json!({"type": "json_object"}),
            ResponseFormat::JsonSchemaObject => json!({
                "type": "json_schema",
                "json_schema": {"name": "plan", "schema": {"type": "object"}}
            }),
        }
    }
}

impl LlmPlanner {
    /// Checks the configuration (URL, model, bounds, key) and, for an
    /// `https://` URL, loads the platform's root certificates.
    pub fn new(config: LlmConfig) -> Result<LlmPlanner, LlmError> {
        let secret = config.api_key.clone().unwrap_or_default();
        LlmPlanner::build(config).map_err(|e| e.redact(&secret))
    }

    fn build(config: LlmConfig) -> Result<LlmPlanner, LlmError> {
        let endpoint = Endpoint::parse(&config.base_url)?;
        if config.model.trim().is_empty() {
            return Err(LlmError::Config("model is empty".to_owned()));
        }
        if config.timeout_ms == 0 {
            return Err(LlmError::Config("timeout_ms is 0".to_owned()));
        }
        if config.response_bytes_max == 0 {
            return Err(LlmError::Config("response_bytes_max is 0".to_owned()));
        }
        let authorization = match config.api_key.as_deref() {
            None | Some("") => None,
            Some(key) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                    LlmError::Config(
                        "api_key has characters an HTTP header cannot carry (control characters?)".to_owned(),
                    )
                })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let tls = if endpoint.tls {
            Some(tls_connector().map_err(|reason| LlmError::Tls {
                url: endpoint.url.clone(),
                reason,
            })?)
        } else {
            None
        };
        Ok(LlmPlanner {
            config,
            endpoint,
            authorization,
            tls,
        })
    }

    /// `{base_url}/chat/completions`, as shown in errors.
    pub fn endpoint(&self) -> &str {
        &self.endpoint.url
    }

    /// Asks the model to plan `request` and validates its answer against
    /// `catalogue`.
    pub async fn plan(&self, request: &str, catalogue: &Catalogue) -> Result<Plan, LlmError> {
        let started = Instant::now();
        let secret = self.config.api_key.as_deref().unwrap_or_default();
        let result = self
            .plan_unredacted(request, catalogue)
            .await
            .map_err(|e| e.redact(secret));
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(plan) => tracing::debug!(
                url = %self.endpoint.url, model = %self.config.model, elapsed_ms,
                tasks = plan.tasks.len(), "the LLM planned a request"
            ),
            Err(error) => tracing::debug!(
                url = %self.endpoint.url, model = %self.config.model, elapsed_ms,
                %error, "the LLM did not plan a request"
            ),
        }
        result
    }

    async fn plan_unredacted(&self, request: &str, catalogue: &Catalogue) -> Result<Plan, LlmError> {
        let request = request.trim();
        if request.is_empty() {
            return Err(LlmError::EmptyRequest);
        }
        if request.len() > REQUEST_BYTES_MAX {
            return Err(LlmError::RequestTooLong(request.len()));
        }
        let prompt = system_prompt(catalogue);
        let deadline = Instant::now() + Duration::from_millis(self.config.timeout_ms);
        let mut format = ResponseFormat::JsonObject;
        loop {
            let body = self.request_body(&prompt, request, format);
            let (status, answer) = tokio::time::timeout_at(deadline, self.exchange(body))
                .await
                .map_err(|_| LlmError::Timeout {
                    url: self.endpoint.url.clone(),
                    timeout_ms: self.config.timeout_ms,
                })??;
            if format == ResponseFormat::JsonObject && refuses_json_object(status, &answer) {
                format = ResponseFormat::JsonSchemaObject;
                continue;
            }
            return interpret(&self.endpoint.url, status, &answer, catalogue);
        }
    }

    fn request_body(&self, prompt: &str, request: &str, format: ResponseFormat) -> Vec<u8> {
        let body = json!({
            "model": self.config.model,
            "messages": [
                {"role": "system", "content": prompt},
                {"role": "user", "content": request},
            ],
            "temperature": 0,
            "response_format": format.to_json(),
        });
        serde_json::to_vec(&body).expect("a JSON value serializes")
    }

    /// One POST on a new connection: the status and the answer (read to at
    /// most `response_bytes_max` bytes).
    async fn exchange(&self, body: Vec<u8>) -> Result<(StatusCode, Bytes), LlmError> {
        let endpoint = &self.endpoint;
        let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| LlmError::Connect {
                url: endpoint.url.clone(),
                reason: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.send(TokioIo::new(tcp), body).await,
            Some(connector) => {
                let name = ServerName::try_from(endpoint.host.clone()).map_err(|e| LlmError::Tls {
                    url: endpoint.url.clone(),
                    reason: format!("'{}' is not a TLS server name: {e}", endpoint.host),
                })?;
                let stream = connector.connect(name, tcp).await.map_err(|e| {
                    let mut reason = chain(&e);
                    if reason.contains("InvalidContentType") {
                        reason.push_str(" (does the server speak plain HTTP? then use http://)");
                    }
                    LlmError::Tls {
                        url: endpoint.url.clone(),
                        reason,
                    }
                })?;
                self.send(TokioIo::new(stream), body).await
            }
        }
    }

    async fn send<T>(&self, io: T, body: Vec<u8>) -> Result<(StatusCode, Bytes), LlmError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let endpoint = &self.endpoint;
        let http_error = |e: hyper::Error| LlmError::Http {
            url: endpoint.url.clone(),
            reason: chain(&e),
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(http_error)?;
        // Drives the connection; stopped when this exchange ends, however
        // it ends (a timeout drops this future).
        let _driver = AbortOnDrop(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let length = body.len();
        let mut request = Request::post(endpoint.path.as_str())
            .header(header::HOST, endpoint.authority.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, length)
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, USER_AGENT)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| LlmError::Http {
                url: endpoint.url.clone(),
                reason: format!("cannot build the request: {e}"),
            })?;
        if let Some(authorization) = &self.authorization {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, authorization.clone());
        }
        sender.ready().await.map_err(http_error)?;
        let response = sender.send_request(request).await.map_err(http_error)?;
        let status = response.status();
        let limit = self.config.response_bytes_max;
        let declared = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if status == StatusCode::OK && declared.is_some_and(|n| n > limit as u64) {
            return Err(LlmError::TooLarge {
                url: endpoint.url.clone(),
                limit,
            });
        }
        let mut incoming = response.into_body();
        let mut answer = Vec::with_capacity(declared.map_or(8 * 1024, |n| n as usize).min(limit));
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(http_error)?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            if answer.len() + data.len() > limit {
                if status != StatusCode::OK {
                    // The status is what matters; the excerpt is short anyway.
                    answer.extend_from_slice(&data[..limit - answer.len()]);
                    break;
                }
                return Err(LlmError::TooLarge {
                    url: endpoint.url.clone(),
                    limit,
                });
            }
            answer.extend_from_slice(&data);
        }
        Ok((status, Bytes::from(answer)))
    }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn tls_connector() -> Result<TlsConnector, String> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
    if added == 0 {
        let errors: Vec<String> = loaded.errors.iter().map(|e| e.to_string()).collect();
        return Err(format!(
            "no root certificates found in the platform's store{}",
            if errors.is_empty() {
                String::new()
            } else {
                format!(" ({})", errors.join("; "))
            }
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// An error with its sources, outermost first.
fn chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

// ---------------------------------------------------------------- endpoint

#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    tls: bool,
    /// For connecting and TLS: without the brackets of an IPv6 literal.
    host: String,
    port: u16,
    /// The `Host` header.
    authority: String,
    /// `<base path>/chat/completions`.
    path: String,
    /// `scheme://authority/path`, shown in errors.
    url: String,
}

impl Endpoint {
    fn parse(base_url: &str) -> Result<Endpoint, LlmError> {
        let shown = shown_url(base_url);
        let bad = |why: &str| LlmError::Config(format!("base_url '{shown}' {why}"));
        if !base_url.contains("://") {
            return Err(bad("has no scheme: use http:// or https://"));
        }
        let uri: Uri = base_url
            .trim()
            .parse()
            .map_err(|e| bad(&format!("is not a URL: {e}")))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => return Err(bad(&format!("has scheme '{other}': use http:// or https://"))),
            None => return Err(bad("has no scheme: use http:// or https://")),
        };
        let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad(
                "has credentials in it: put the API key in api_key, which is sent as a bearer token",
            ));
        }
        if uri.query().is_some() {
            return Err(bad(
                "has a query: give the API root, e.g. http://127.0.0.1:1234/v1",
            ));
        }
        let host = authority.host();
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let base_path = uri.path().trim_end_matches('/');
        let path = format!("{base_path}/chat/completions");
        let scheme = if tls { "https" } else { "http" };
        Ok(Endpoint {
            tls,
            host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
            port,
            authority: authority.as_str().to_owned(),
            url: format!("{scheme}://{}{path}", authority.as_str()),
            path,
        })
    }
}

/// `base_url` as it may be shown: no credentials, query or fragment.
fn shown_url(base_url: &str) -> String {
    let url = base_url.trim();
    let url = url.split(['?', '#']).next().unwrap_or_default();
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if scheme.is_empty() {
        format!("{authority}{path}")
    } else {
        format!("{scheme}://{authority}{path}")
    }
}

// ---------------------------------------------------------------- prompt

/// The system prompt: the plan's JSON form, every agent, operation and
/// parameter of `catalogue`, and how to refuse.
pub fn system_prompt(catalogue: &Catalogue) -> String {
    let mut prompt = format!(
        r#"You plan maintenance workflows for PostgreSQL databases run by dbswarm, a swarm of agents. You turn the user's request into a workflow plan using only the agents and operations listed below.

Answer with one JSON object and nothing else: no prose, no Markdown.

If the request can be planned, answer with the plan, exactly in this form:
{{
  "name": "<short name of the workflow>",
  "description": "<what the workflow does, one sentence>",
  "tasks": [
    {{
      "id": "<unique task id: 1 to {TASK_ID_BYTES_MAX} characters of a-z, A-Z, 0-9, _ and ->",
      "agent": "<an agent listed below>",
      "operation": "<an operation of that agent>",
      "params": {{"<parameter>": <value>}},
      "dependencies": ["<ids of tasks that must succeed before this one starts>"],
      "timeout": "<optional: seconds as a number, or a duration such as \"500ms\", \"30s\", \"5m\", \"1h\"; between 100ms and 24h; default 5m>",
      "retries": <optional: whole number of retries from 0 to {RETRIES_MAX}; default 0>,
      "compensation": {{"operation": "<an operation of the same agent that undoes this task>", "params": {{}}}}
    }}
  ]
}}

Rules:
- "name" and "tasks" are required; "description" is optional. In a task, "id", "agent" and "operation" are required; "params", "dependencies", "timeout", "retries" and "compensation" are optional: leave out what the request does not call for. No other fields are allowed anywhere.
- At most {TASKS_MAX} tasks. Ids are unique. Dependencies name ids of other tasks in the plan and form no cycle.
- Tasks run in parallel unless one depends on another. When the request orders steps ("then", "after", "before"), the later step depends on the earlier one.
- "params" holds only the parameters the operation lists, each with the listed JSON type, and every required one. Take values from the request; leave out optional parameters the request does not give; never invent a value for a required one.
- A compensation names an operation of the task's own agent, with that operation's parameters.
- Plan only what the request asks for.

If the request cannot be planned with these operations (something is asked that no operation does, or a required parameter's value is not in the request), answer only:
{{"error": "<what cannot be planned and why, in one sentence>"}}

Agents and their operations (an operation is written agent.operation; in a task, "agent" is the part before the dot and "operation" the part after it):
"#
    );
    for agent in catalogue.agents() {
        for operation in operations_of(catalogue, agent) {
            let Some(spec) = catalogue.operation(agent, &operation) else {
                continue;
            };
            let params: Vec<String> = spec
                .params
                .iter()
                .map(|(name, param)| {
                    format!(
                        "{name} ({}, {})",
                        type_name(param.param_type),
                        if param.required { "required" } else { "optional" }
                    )
                })
                .collect();
            prompt.push_str(&format!(
                "- {agent}.{operation}: {}\n",
                if params.is_empty() {
                    "no parameters".to_owned()
                } else {
                    format!("parameters {}", params.join(", "))
                }
            ));
        }
    }
    if let Some(example) = example(catalogue) {
        prompt.push_str(&format!(
            "\nExample. Request: \"back up the database app, then run migration add_user_roles\". Answer:\n{example}\n"
        ));
    }
    prompt
}

fn type_name(param_type: domain::workflow::ParamType) -> &'static str {
    use domain::workflow::ParamType;
    match param_type {
        ParamType::String => "string",
        ParamType::Integer => "integer",
        ParamType::Number => "number",
        ParamType::Boolean => "boolean",
        ParamType::Array => "array",
        ParamType::Object => "object",
        ParamType::Any => "any JSON value",
    }
}

/// A worked example for the prompt.
const EXAMPLE: &str = r#"{"name": "Migration with backup", "description": "Back up the app database, then apply migration add_user_roles.", "tasks": [{"id": "backup", "agent": "backup", "operation": "create", "params": {"database": "app"}, "timeout": "30m"}, {"id": "migrate", "agent": "schema", "operation": "apply", "params": {"database": "app", "migration": "add_user_roles"}, "dependencies": ["backup"], "compensation": {"operation": "rollback", "params": {"database": "app", "migration": "add_user_roles"}}}]}"#;

/// The worked example, when it is a valid plan for `catalogue`.
fn example(catalogue: &Catalogue) -> Option<&'static str> {
    let spec: PlanSpec = serde_json::from_str(EXAMPLE).ok()?;
    Plan::validate(spec, catalogue).ok()?;
    Some(EXAMPLE)
}

/// The operations of `agent`, sorted.
fn operations_of(catalogue: &Catalogue, agent: &str) -> Vec<String> {
    catalogue.operations(agent).map(str::to_owned).collect()
}

// ---------------------------------------------------------------- answer

/// An LM Studio-like server refusing `response_format: json_object`.
fn refuses_json_object(status: StatusCode, answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    status == StatusCode::BAD_REQUEST && text.contains("response_format") && text.contains("json_schema")
}

/// A chat-completions answer to a plan.
fn interpret(url: &str, status: StatusCode, answer: &[u8], catalogue: &Catalogue) -> Result<Plan, LlmError> {
    if status != StatusCode::OK {
        return Err(LlmError::Status {
            url: url.to_owned(),
            status: status.as_u16(),
            body: excerpt(&String::from_utf8_lossy(answer)),
        });
    }
    let value: Value = serde_json::from_slice(answer).map_err(|e| LlmError::NotJson {
        url: url.to_owned(),
        reason: e.to_string(),
        excerpt: excerpt(&String::from_utf8_lossy(answer)),
    })?;
    let choice = match value.get("choices").and_then(Value::as_array) {
        Some(choices) if !choices.is_empty() => &choices[0],
        _ => {
            if let Some(error) = value.get("error").filter(|e| !e.is_null()) {
                let message = error
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .or_else(|| error.as_str().map(str::to_owned))
                    .unwrap_or_else(|| error.to_string());
                return Err(LlmError::Api {
                    url: url.to_owned(),
                    message: excerpt(&message),
                });
            }
            return Err(LlmError::NoChoices {
                url: url.to_owned(),
                excerpt: excerpt(&value.to_string()),
            });
        }
    };
    let finish_reason = choice.get("finish_reason").and_then(Value::as_str);
    let message = choice.get("message");
    let content = message.and_then(|m| m.get("content")).and_then(Value::as_str);
    let Some(content) = content.filter(|c| !c.trim().is_empty()) else {
        if let Some(refusal) = message.and_then(|m| m.get("refusal")).and_then(Value::as_str) {
            return Err(LlmError::Refused(excerpt(refusal)));
        }
        return Err(LlmError::NoContent {
            url: url.to_owned(),
            finish_reason: finish_reason.unwrap_or("none").to_owned(),
        });
    };
    plan_from_content(content, catalogue).map_err(|e| match e {
        LlmError::NotAPlan { reason, excerpt } if finish_reason == Some("length") => LlmError::NotAPlan {
            reason: format!("{reason} (the model stopped at its output limit: finish_reason \"length\")"),
            excerpt,
        },
        e => e,
    })
}

/// What the model wrote to a validated plan, its refusal, or why it is
/// neither. Content in a Markdown code fence is taken from the fence.
pub fn plan_from_content(content: &str, catalogue: &Catalogue) -> Result<Plan, LlmError> {
    let text = unfence(content);
    let not_a_plan = |reason: String| LlmError::NotAPlan {
        reason,
        excerpt: excerpt(content),
    };
    if text.is_empty() {
        return Err(not_a_plan("the answer is empty".to_owned()));
    }
    let value: Value = serde_json::from_str(text).map_err(|e| not_a_plan(format!("not JSON: {e}")))?;
    if let Some(object) = value.as_object()
        && !object.contains_key("tasks")
        && let Some(error) = object.get("error")
    {
        let why = error.as_str().map_or_else(|| error.to_string(), str::to_owned);
        return Err(LlmError::Refused(excerpt(&why)));
    }
    let spec: PlanSpec = serde_json::from_value(value).map_err(|e| not_a_plan(e.to_string()))?;
    Plan::validate(spec, catalogue).map_err(LlmError::InvalidPlan)
}

/// The inside of the first Markdown code fence in `content` (```json or
/// ```), or all of it, trimmed.
fn unfence(content: &str) -> &str {
    let content = content.trim();
    let Some(open) = content.find("```") else {
        return content;
    };
    let after = &content[open + 3..];
    // The info string ("json") runs to the end of the opening line.
    let body = match after.find('\n') {
        Some(newline) => &after[newline + 1..],
        None => after.trim_start_matches(|c: char| c.is_ascii_alphanumeric()),
    };
    match body.find("```") {
        Some(close) => body[..close].trim(),
        None => body.trim(),
    }
}

/// At most [`EXCERPT_BYTES_MAX`] bytes of `text` on one line.
fn excerpt(text: &str) -> String {
    let text = text.trim();
    let mut end = text.len().min(EXCERPT_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut shown: String = text[..end]
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if end < text.len() {
        shown.push_str(&format!("… ({} bytes in all)", text.len()));
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::workflow::catalogue::{AGENTS, PROBE};
    use domain::workflow::{OperationSpec, ParamSpec, ParamType};

    fn spec(params: &[(&str, ParamType, bool)]) -> OperationSpec {
        let mut spec = OperationSpec::default();
        for &(name, param_type, required) in params {
            spec.params
                .insert(name.to_owned(), ParamSpec { param_type, required });
        }
        spec
    }

    /// A catalogue as the agents' operations make one (the server derives
    /// the real one; this crate does not know the agents): probes, a few
    /// operations with parameters of each kind, one without.
    fn declared() -> Catalogue {
        use ParamType::{Any, Boolean, Integer, Object, String as Text};
        let database = ("database", Text, false);
        let probes = AGENTS.iter().fold(Catalogue::default(), |c, agent| {
            c.with(agent, PROBE, spec(&[database, ("simulate", Object, false)]))
        });
        probes
            .with("backup", "create", spec(&[database, ("kind", Text, false)]))
            .with(
                "backup",
                "restore_pitr",
                spec(&[database, ("target_time", Text, true), ("port", Integer, false)]),
            )
            .with(
                "schema",
                "apply",
                spec(&[
                    database,
                    ("migration", Text, false),
                    ("definition", Any, false),
                    ("complete", Boolean, false),
                ]),
            )
            .with(
                "schema",
                "rollback",
                spec(&[database, ("migration", Text, false)]),
            )
            .with("cache", "stats", OperationSpec::default())
    }

    fn chat(content: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "id": "c1", "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}]
        }))
        .unwrap()
    }

    const URL: &str = "http://127.0.0.1:1234/v1/chat/completions";

    fn plan_json() -> String {
        json!({
            "name": "migrate",
            "tasks": [
                {"id": "backup", "agent": "backup", "operation": "create"},
                {"id": "migrate", "agent": "schema", "operation": "apply",
                 "params": {"migration": "add_user_roles"}, "dependencies": ["backup"]}
            ]
        })
        .to_string()
    }

    #[test]
    fn the_prompt_lists_every_agent_operation_and_parameter() {
        let catalogue = declared();
        let prompt = system_prompt(&catalogue);
        let mut listed = 0;
        for agent in AGENTS {
            let operations = operations_of(&catalogue, agent);
            assert!(operations.iter().any(|o| o == "probe"), "{agent}: {operations:?}");
            for operation in operations {
                let line = prompt
                    .lines()
                    .find(|l| l.starts_with(&format!("- {agent}.{operation}:")))
                    .unwrap_or_else(|| panic!("{agent}.{operation} is not in the prompt"));
                for (name, param) in &catalogue.operation(agent, &operation).unwrap().params {
                    let required = if param.required { "required" } else { "optional" };
                    assert!(
                        line.contains(&format!("{name} ({}, {required})", type_name(param.param_type))),
                        "{line}"
                    );
                }
                listed += 1;
            }
        }
        // 8 probes and the 5 other operations of the catalogue.
        assert_eq!(listed, 13);
        for line in [
            "- schema.apply:",
            "- backup.restore_pitr:",
            "- cache.stats: no parameters",
        ] {
            assert!(prompt.contains(line), "{line}");
        }
        assert!(prompt.contains(r#"{"error": "#));
        for field in [
            "\"name\"",
            "\"description\"",
            "\"tasks\"",
            "\"id\"",
            "\"agent\"",
            "\"operation\"",
            "\"params\"",
            "\"dependencies\"",
            "\"timeout\"",
            "\"retries\"",
            "\"compensation\"",
        ] {
            assert!(prompt.contains(field), "{field}");
        }
    }

    #[test]
    fn the_example_in_the_prompt_is_a_valid_plan_and_left_out_when_it_is_not() {
        assert!(example(&declared()).is_some());
        assert!(system_prompt(&declared()).contains("Example."));
        let small = Catalogue::default().with("cache", "stats", Default::default());
        assert!(example(&small).is_none());
        let prompt = system_prompt(&small);
        assert!(!prompt.contains("Example."));
        assert!(prompt.contains("- cache.stats: no parameters"));
        assert!(!prompt.contains("backup."));
    }

    #[test]
    fn content_is_taken_from_code_fences() {
        assert_eq!(unfence("  {\"a\": 1} \n"), "{\"a\": 1}");
        assert_eq!(unfence("```json\n{\"a\": 1}\n```"), "{\"a\": 1}");
        assert_eq!(unfence("```\n{\"a\": 1}\n```\n"), "{\"a\": 1}");
        assert_eq!(unfence("```JSON\r\n{\"a\": 1}\r\n```"), "{\"a\": 1}");
        assert_eq!(
            unfence("Here is the plan:\n```json\n{\"a\": 1}\n```\nDone."),
            "{\"a\": 1}"
        );
        assert_eq!(unfence("```json {\"a\": 1}```"), "{\"a\": 1}");
        assert_eq!(unfence("```json\n{\"a\": 1}"), "{\"a\": 1}");
        let plan = plan_from_content(&format!("```json\n{}\n```", plan_json()), &declared()).unwrap();
        assert_eq!(plan.tasks.len(), 2);
    }

    #[test]
    fn a_valid_answer_becomes_a_validated_plan() {
        let plan = interpret(URL, StatusCode::OK, &chat(&plan_json()), &declared()).unwrap();
        assert_eq!(plan.name, "migrate");
        assert_eq!(plan.tasks[0].agent, "backup");
        assert_eq!(plan.tasks[1].operation, "apply");
        assert_eq!(plan.tasks[1].dependencies, vec![0]);
    }

    #[test]
    fn each_failure_maps_to_its_error() {
        let catalogue = declared();
        let err = |status: u16, body: &[u8]| {
            interpret(URL, StatusCode::from_u16(status).unwrap(), body, &catalogue).unwrap_err()
        };

        let e = err(500, b"{\"error\": {\"message\": \"model crashed\"}}");
        assert!(matches!(&e, LlmError::Status { status: 500, body, .. } if body.contains("model crashed")));
        assert!(
            e.to_string().contains(URL) && e.to_string().contains("HTTP 500"),
            "{e}"
        );

        let long = "x".repeat(10_000);
        let LlmError::Status { body, .. } = err(502, long.as_bytes()) else {
            panic!()
        };
        assert!(
            body.len() < EXCERPT_BYTES_MAX + 40 && body.ends_with("(10000 bytes in all)"),
            "{body}"
        );

        assert!(
            matches!(err(200, b"<html>oops</html>"), LlmError::NotJson { excerpt, .. } if excerpt.contains("oops"))
        );
        assert!(matches!(
            err(200, b"{\"choices\": []}"),
            LlmError::NoChoices { .. }
        ));
        assert!(matches!(
            err(200, b"{\"object\": \"list\"}"),
            LlmError::NoChoices { .. }
        ));
        assert!(matches!(
            err(200, b"{\"error\": {\"message\": \"no such model\"}}"),
            LlmError::Api { message, .. } if message == "no such model"
        ));
        assert!(matches!(
            err(200, b"{\"choices\": [{\"message\": {\"content\": null}, \"finish_reason\": \"length\"}]}"),
            LlmError::NoContent { finish_reason, .. } if finish_reason == "length"
        ));
        assert!(matches!(
            err(200, b"{\"choices\": [{\"message\": {\"content\": null, \"refusal\": \"I can't\"}}]}"),
            LlmError::Refused(why) if why == "I can't"
        ));

        let e = err(200, &chat("{\"tasks\": [ {\"id\": "));
        assert!(
            matches!(&e, LlmError::NotAPlan { reason, .. } if reason.starts_with("not JSON")),
            "{e}"
        );
        let e = err(200, &chat("I would back up first."));
        assert!(
            matches!(&e, LlmError::NotAPlan { excerpt, .. } if excerpt == "I would back up first."),
            "{e}"
        );
        let e = err(200, &chat("{\"steps\": []}"));
        assert!(e.to_string().contains("unknown field `steps`"), "{e}");
        let e = err(
            200,
            &chat("{\"tasks\": [{\"id\": \"a\", \"agent\": \"backup\"}]}"),
        );
        assert!(e.to_string().contains("missing field `operation`"), "{e}");

        let truncated = serde_json::to_vec(&json!({"choices": [{"finish_reason": "length",
            "message": {"content": "{\"tasks\": ["}}]}))
        .unwrap();
        assert!(
            err(200, &truncated)
                .to_string()
                .contains("finish_reason \"length\"")
        );

        let e = err(
            200,
            &chat("{\"tasks\": [{\"id\": \"a\", \"agent\": \"dba\", \"operation\": \"vacuum\"}]}"),
        );
        let LlmError::InvalidPlan(PlanError { problems }) = &e else {
            panic!("{e}")
        };
        assert!(problems[0].contains("unknown agent 'dba'"), "{problems:?}");
        assert!(
            e.to_string()
                .starts_with("the model's plan is invalid: task 'a': unknown agent 'dba'")
        );

        let e = err(200, &chat("{\"error\": \"there is no agent that sends email\"}"));
        assert_eq!(
            e,
            LlmError::Refused("there is no agent that sends email".to_owned())
        );
        assert_eq!(
            e.to_string(),
            "the model could not plan the request: there is no agent that sends email"
        );
    }

    #[test]
    fn lm_studio_refusing_json_object_is_recognised() {
        let lm_studio = br#"{"error":"'response_format.type' must be 'json_schema' or 'text'"}"#;
        assert!(refuses_json_object(StatusCode::BAD_REQUEST, lm_studio));
        assert!(!refuses_json_object(
            StatusCode::BAD_REQUEST,
            b"{\"error\": \"bad model\"}"
        ));
        assert!(!refuses_json_object(StatusCode::INTERNAL_SERVER_ERROR, lm_studio));
    }

    #[test]
    fn base_urls_are_checked_and_shown_without_secrets() {
        let e = Endpoint::parse("http://127.0.0.1:1234/v1/").unwrap();
        assert_eq!(
            (
                e.tls,
                e.host.as_str(),
                e.port,
                e.path.as_str(),
                e.authority.as_str(),
                e.url.as_str()
            ),
            (
                false,
                "127.0.0.1",
                1234,
                "/v1/chat/completions",
                "127.0.0.1:1234",
                URL
            )
        );
        let e = Endpoint::parse("https://api.openai.com/v1").unwrap();
        assert_eq!(
            (e.tls, e.port, e.url.as_str()),
            (true, 443, "https://api.openai.com/v1/chat/completions")
        );
        let e = Endpoint::parse("http://[::1]:8080").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.authority.as_str()),
            ("::1", 8080, "[::1]:8080")
        );
        assert_eq!(e.path, "/chat/completions");

        for (url, why) in [
            ("ftp://host/v1", "scheme 'ftp'"),
            ("127.0.0.1:1234/v1", "http:// or https://"),
            ("http://user:sk-secret@host/v1", "credentials"),
            ("http://host/v1?key=sk-secret", "query"),
            ("http://bad host/v1", "not a URL"),
        ] {
            let e = Endpoint::parse(url).unwrap_err().to_string();
            assert!(e.contains(why), "{url}: {e}");
            assert!(!e.contains("sk-secret"), "{e}");
        }
    }

    #[test]
    fn the_configuration_is_checked_and_the_key_never_shown() {
        let config = LlmConfig {
            base_url: "http://127.0.0.1:1234/v1".to_owned(),
            model: "m".to_owned(),
            api_key: Some("sk-secret-123".to_owned()),
            timeout_ms: 1000,
            response_bytes_max: 1000,
        };
        let planner = LlmPlanner::new(config.clone()).unwrap();
        assert!(!format!("{planner:?}").contains("sk-secret-123"));
        assert!(format!("{config:?}").contains(REDACTED));
        assert_eq!(planner.endpoint(), URL);

        let bad = |f: fn(&mut LlmConfig)| {
            let mut c = config.clone();
            f(&mut c);
            LlmPlanner::new(c).unwrap_err().to_string()
        };
        assert!(bad(|c| c.model = " ".into()).contains("model is empty"));
        assert!(bad(|c| c.timeout_ms = 0).contains("timeout_ms"));
        assert!(bad(|c| c.response_bytes_max = 0).contains("response_bytes_max"));
        let e = bad(|c| c.api_key = Some("sk-secret-123\n".into()));
        assert!(e.contains("api_key") && !e.contains("sk-secret-123"), "{e}");
        let e = bad(|c| c.base_url = "http://x:sk-secret-123@host/v1".into());
        assert!(!e.contains("sk-secret-123"), "{e}");
    }

    #[test]
    fn redaction_reaches_every_text() {
        let secret = "sk-secret-123";
        let errors = [
            LlmError::Status {
                url: URL.into(),
                status: 401,
                body: format!("bad key Bearer {secret}"),
            },
            LlmError::NotAPlan {
                reason: secret.into(),
                excerpt: secret.into(),
            },
            LlmError::InvalidPlan(PlanError {
                problems: vec![format!("unknown agent '{secret}'")],
            }),
            LlmError::Refused(secret.into()),
            LlmError::Api {
                url: URL.into(),
                message: secret.into(),
            },
        ];
        for error in errors {
            let redacted = error.redact(secret);
            assert!(!redacted.to_string().contains(secret), "{redacted}");
            assert!(!format!("{redacted:?}").contains(secret), "{redacted:?}");
            assert!(redacted.to_string().contains(REDACTED), "{redacted}");
        }
    }

    #[test]
    fn excerpts_are_bounded_on_char_boundaries_and_on_one_line() {
        let text = "é".repeat(EXCERPT_BYTES_MAX);
        let shown = excerpt(&text);
        assert!(shown.starts_with('é') && shown.contains("bytes in all"));
        assert_eq!(excerpt("a\nb\tc"), "a b c");
    }
}
