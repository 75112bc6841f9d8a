//! What the S3 tests share: the S3 server `scripts/services.sh` started
//! (moto), a raw SDK client for it, and [`FakeS3`], a tiny S3-like HTTP
//! server that keeps objects in a map and can ignore conditional headers,
//! fail requests, and log every request it gets.

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use statelock::store::url::{LockFormat, S3Location};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The bucket the S3 tests share (each test uses its own prefix).
pub const BUCKET: &str = "statelock-test";

/// moto's endpoint; `None` if the service tests are explicitly skipped.
/// Panics (failing the test) if it is not configured or not reachable.
pub fn endpoint() -> Option<String> {
    super::service("STATELOCK_TEST_S3_ENDPOINT")
}

/// A raw SDK client for `endpoint` with test credentials (path-style).
pub fn raw_client(endpoint: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(
            "test",
            "test",
            None,
            None,
            "statelock-tests",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Creates `bucket` unless it exists.
pub async fn ensure_bucket(client: &aws_sdk_s3::Client, bucket: &str) {
    if let Err(e) = client.create_bucket().bucket(bucket).send().await {
        let code = aws_sdk_s3::error::ProvideErrorMetadata::code(&e);
        assert!(
            matches!(
                code,
                Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
            ),
            "cannot create the bucket {bucket}: {e:?}"
        );
    }
}

/// A prefix no other test (or test run) uses.
pub fn unique_prefix(name: &str) -> String {
    format!("test/{name}/{}", uuid::Uuid::new_v4().simple())
}

/// A statelock-format location in `bucket` under `prefix` at `endpoint`.
pub fn location(endpoint: &str, bucket: &str, prefix: &str) -> S3Location {
    S3Location {
        region: Some("us-east-1".into()),
        endpoint: Some(endpoint.to_string()),
        ..S3Location::new(bucket, prefix)
    }
}

/// The same in Terraform's format.
pub fn tf_location(endpoint: &str, bucket: &str, prefix: &str) -> S3Location {
    S3Location {
        format: LockFormat::Terraform,
        ..location(endpoint, bucket, prefix)
    }
}

/// The body of object `key`, if any.
pub async fn raw_get(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Option<Vec<u8>> {
    match client.get_object().bucket(bucket).key(key).send().await {
        Ok(out) => Some(
            out.body
                .collect()
                .await
                .expect("read the body")
                .into_bytes()
                .to_vec(),
        ),
        Err(e) if aws_sdk_s3::error::ProvideErrorMetadata::code(&e) == Some("NoSuchKey") => None,
        Err(e) => panic!("get {key}: {e:?}"),
    }
}

/// Writes object `key` unconditionally.
pub async fn raw_put(client: &aws_sdk_s3::Client, bucket: &str, key: &str, body: &[u8]) {
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(body.to_vec().into())
        .send()
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
}

/// Deletes object `key` unconditionally.
pub async fn raw_delete(client: &aws_sdk_s3::Client, bucket: &str, key: &str) {
    client
        .delete_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("delete {key}: {e:?}"));
}

/// The keys of the objects under `prefix`.
pub async fn raw_list(client: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<String> {
    let out = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .expect("list");
    out.contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect()
}

/// How a [`FakeS3`] behaves.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Honour `If-None-Match: *` and `If-Match` (412, and 404 for `If-Match`
    /// on a missing object) like S3; otherwise ignore them and always write.
    pub honour_conditions: bool,
    /// Methods answered with S3's 500 `InternalError` (e.g. `["PUT"]`).
    pub fail: Vec<&'static str>,
    /// Replace the object with this body (a new ETag) just before the first
    /// `DeleteObject` is served: the object changed between a client's look
    /// and its delete.
    pub replace_before_delete: Option<Vec<u8>>,
}

/// One request a [`FakeS3`] received: method and path (query included).
pub type Logged = (String, String);

/// A [`FakeS3`]'s objects: `/bucket/key` to body and ETag.
type Objects = Mutex<HashMap<String, (Vec<u8>, String)>>;

/// A tiny S3-like server on 127.0.0.1 (path-style: `/bucket/key`): objects
/// in a map, any bucket, no authentication. For tests only.
pub struct FakeS3 {
    endpoint: String,
    objects: Arc<Objects>,
    log: Arc<Mutex<Vec<Logged>>>,
}

impl FakeS3 {
    /// Starts a server behaving as `behaviour` (it lives until the test
    /// process exits).
    pub fn start(behaviour: Behaviour) -> FakeS3 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let objects = Arc::new(Mutex::new(HashMap::new()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (shared, logged) = (objects.clone(), log.clone());
        std::thread::spawn(move || {
            let mut behaviour = behaviour;
            let mut version = 0u64;
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let Some(request) = read_request(&mut conn) else {
                    continue;
                };
                logged
                    .lock()
                    .unwrap()
                    .push((request.method.clone(), request.path.clone()));
                version += 1;
                if request.method == "DELETE" {
                    if let Some(body) = behaviour.replace_before_delete.take() {
                        let path = percent_decode(request.path.split('?').next().unwrap_or(""));
                        let etag = format!("\"replaced-{version}\"");
                        shared.lock().unwrap().insert(path, (body, etag));
                    }
                }
                let response = answer(&behaviour, &shared, &request, version);
                let _ = conn.write_all(&response);
            }
        });
        FakeS3 {
            endpoint,
            objects,
            log,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// Puts an object straight into the map (`path`: `/bucket/key`).
    pub fn seed(&self, path: &str, body: &[u8]) {
        self.objects
            .lock()
            .unwrap()
            .insert(path.to_string(), (body.to_vec(), "\"seeded\"".to_string()));
    }

    /// The requests received so far, and forgets them.
    pub fn take_log(&self) -> Vec<Logged> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_request(conn: &mut TcpStream) -> Option<Request> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let mut lines = head.lines();
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = raw[head_end + 4..].to_vec();
    while body.len() < length {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&buf[..n]);
    }
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

/// `%XX` escapes decoded (invalid ones kept as they are).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond(status: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn error(status: &str, code: &str) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>\
         <Message>injected</Message></Error>"
    );
    respond(
        status,
        &[("Content-Type", "application/xml".to_string())],
        body.as_bytes(),
    )
}

fn answer(behaviour: &Behaviour, objects: &Objects, request: &Request, version: u64) -> Vec<u8> {
    if behaviour.fail.contains(&request.method.as_str()) {
        return error("500 Internal Server Error", "InternalError");
    }
    let (path, query) = request
        .path
        .split_once('?')
        .unwrap_or((request.path.as_str(), ""));
    let path = percent_decode(path);
    let path = path.as_str();
    let mut objects = objects.lock().unwrap();
    if request.method == "GET" && query.contains("list-type=2") {
        let bucket = path.trim_matches('/');
        let prefix = percent_decode(
            query
                .split('&')
                .find_map(|p| p.strip_prefix("prefix="))
                .unwrap_or(""),
        );
        let mut keys: Vec<String> = objects
            .keys()
            .filter_map(|k| k.strip_prefix(&format!("/{bucket}/")))
            .filter(|k| k.starts_with(&prefix))
            .map(str::to_string)
            .collect();
        keys.sort();
        let contents: String = keys
            .iter()
            .map(|k| format!("<Contents><Key>{k}</Key><Size>1</Size></Contents>"))
            .collect();
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Name>{bucket}</Name>\
             <KeyCount>{}</KeyCount><IsTruncated>false</IsTruncated>{contents}</ListBucketResult>",
            keys.len()
        );
        return respond(
            "200 OK",
            &[("Content-Type", "application/xml".to_string())],
            body.as_bytes(),
        );
    }
    let current = objects.get(path).cloned();
    if behaviour.honour_conditions {
        let if_match = request.header("If-Match");
        let if_none_match = request.header("If-None-Match");
        match (&current, if_match) {
            (None, Some(_)) => return error("404 Not Found", "NoSuchKey"),
            (Some((_, etag)), Some(wanted)) if etag != wanted => {
                return error("412 Precondition Failed", "PreconditionFailed")
            }
            _ => {}
        }
        if request.method == "PUT" && if_none_match == Some("*") && current.is_some() {
            return error("412 Precondition Failed", "PreconditionFailed");
        }
    }
    match request.method.as_str() {
        "PUT" => {
            let etag = format!("\"{version:032x}\"");
            objects.insert(path.to_string(), (request.body.clone(), etag.clone()));
            respond("200 OK", &[("ETag", etag)], b"")
        }
        "GET" | "HEAD" => match current {
            Some((body, etag)) => {
                let headers = [
                    ("ETag", etag),
                    ("Content-Type", "application/json".to_string()),
                ];
                if request.method == "HEAD" {
                    let mut head = respond("200 OK", &headers, b"");
                    // HEAD: the length of the body that is not sent.
                    let text = String::from_utf8_lossy(&head).replace(
                        "Content-Length: 0",
                        &format!("Content-Length: {}", body.len()),
                    );
                    head = text.into_bytes();
                    head
                } else {
                    respond("200 OK", &headers, &body)
                }
            }
            None if request.method == "HEAD" => respond("404 Not Found", &[], b""),
            None => error("404 Not Found", "NoSuchKey"),
        },
        "DELETE" => {
            objects.remove(path);
            respond("204 No Content", &[], b"")
        }
        _ => error("405 Method Not Allowed", "MethodNotAllowed"),
    }
}
