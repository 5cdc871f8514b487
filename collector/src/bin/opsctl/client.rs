//! The HTTP client of `opsctl`: calls the admin API with the caller's
//! token, decodes answers into their `common::api` types, and maps failures
//! to exit codes (1: the operation failed, 2: bad usage or configuration).
//! With `--json` the answer is printed as the collector sent it.

use common::api::ErrorBody;
use reqwest::blocking::Response;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::process::ExitCode;

/// How a command failed: 1 for operations, 2 for usage/config.
pub enum Failure {
    Op(String),
    Usage(String),
}

impl Failure {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Op(_) => ExitCode::from(1),
            Failure::Usage(_) => ExitCode::from(2),
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Failure::Op(m) | Failure::Usage(m) => m,
        }
    }
}

pub type Out = Result<ExitCode, Failure>;

/// A decoded answer and the JSON it came from (printed by `--json`).
pub struct Answer<T> {
    pub body: T,
    pub raw: Value,
}

pub struct Client {
    pub base: String,
    pub token: String,
    pub http: reqwest::blocking::Client,
    /// `--json`: print what the collector sent, nothing else.
    pub json: bool,
}

/// The message of a refusal: the error body's, else the body itself.
fn refusal(status: reqwest::StatusCode, text: String) -> Failure {
    let msg = serde_json::from_str::<ErrorBody>(&text)
        .map(|e| e.error.message)
        .unwrap_or(text);
    Failure::Op(format!("{msg} (HTTP {})", status.as_u16()))
}

fn decode<T: DeserializeOwned>(raw: Value) -> Result<Answer<T>, Failure> {
    let body = T::deserialize(&raw)
        .map_err(|e| Failure::Op(format!("bad answer from the collector: {e}")))?;
    Ok(Answer { body, raw })
}

fn read_json(resp: Response) -> Result<Value, Failure> {
    resp.json()
        .map_err(|e| Failure::Op(format!("bad answer from the collector: {e}")))
}

impl Client {
    fn send(
        &self,
        method: Method,
        path: &str,
        query: Option<&dyn erased::Query>,
        body: Option<Value>,
    ) -> Result<Response, Failure> {
        let url = format!("{}{}{path}", self.base, common::api::PREFIX);
        let mut req = self
            .http
            .request(method, &url)
            .bearer_auth(&self.token)
            .header("user-agent", format!("opsctl/{}", common::VERSION));
        if let Some(q) = query {
            req = q.add_to(req);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send()
            .map_err(|e| Failure::Op(format!("cannot reach the collector at {}: {e}", self.base)))
    }

    /// The answer if it is a success, else the refusal as a [`Failure`].
    fn call(
        &self,
        method: Method,
        path: &str,
        query: Option<&dyn erased::Query>,
        body: Option<Value>,
    ) -> Result<Response, Failure> {
        let resp = self.send(method, path, query, body)?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        Err(refusal(status, resp.text().unwrap_or_default()))
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Answer<T>, Failure> {
        decode(read_json(self.call(Method::GET, path, None, None)?)?)
    }

    /// GET with a query string built from `query` (members that are `None`
    /// are left out).
    pub fn get_with<T: DeserializeOwned, Q: Serialize>(
        &self,
        path: &str,
        query: &Q,
    ) -> Result<Answer<T>, Failure> {
        decode(read_json(self.call(
            Method::GET,
            path,
            Some(query),
            None,
        )?)?)
    }

    /// GET of an answer that is not JSON (the audit export), as text.
    pub fn get_text<Q: Serialize>(&self, path: &str, query: &Q) -> Result<String, Failure> {
        self.call(Method::GET, path, Some(query), None)?
            .text()
            .map_err(|e| Failure::Op(e.to_string()))
    }

    pub fn post<T: DeserializeOwned, B: Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<Answer<T>, Failure> {
        decode(read_json(self.call(
            Method::POST,
            path,
            None,
            Some(to_value(body)?),
        )?)?)
    }

    /// POSTs `body`; a refusal whose error code is `code` comes back as
    /// `Ok(Err(error body))` for the caller to show, other failures as
    /// [`Failure`].
    pub fn post_unless<T: DeserializeOwned, B: Serialize>(
        &self,
        path: &str,
        body: &B,
        code: &str,
    ) -> Result<Result<Answer<T>, Answer<ErrorBody>>, Failure> {
        let resp = self.send(Method::POST, path, None, Some(to_value(body)?))?;
        let status = resp.status();
        let text = resp.text().unwrap_or_default();
        let raw: Option<Value> = serde_json::from_str(&text).ok();
        match raw {
            Some(raw) if status.is_success() => decode(raw).map(Ok),
            Some(raw) => match decode::<ErrorBody>(raw) {
                Ok(e) if e.body.error.code == code => Ok(Err(e)),
                _ => Err(refusal(status, text)),
            },
            None => Err(refusal(status, text)),
        }
    }

    /// Prints the answer as the collector sent it with `--json`, else runs
    /// `human` on the decoded answer.
    pub fn show<T>(&self, a: &Answer<T>, human: impl FnOnce(&T)) {
        if self.json {
            print_json(&a.raw);
        } else {
            human(&a.body);
        }
    }
}

pub fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn to_value<B: Serialize>(body: &B) -> Result<Value, Failure> {
    serde_json::to_value(body).map_err(|e| Failure::Usage(e.to_string()))
}

/// Percent-encodes one path segment.
pub fn q(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `-` for nothing, else the value: how tables show an optional member.
pub fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// Query strings of any typed query.
mod erased {
    use reqwest::blocking::RequestBuilder;

    pub trait Query {
        fn add_to(&self, req: RequestBuilder) -> RequestBuilder;
    }

    impl<T: serde::Serialize> Query for T {
        fn add_to(&self, req: RequestBuilder) -> RequestBuilder {
            req.query(self)
        }
    }
}
