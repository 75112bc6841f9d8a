//! What the service tests share: finding the services `scripts/services.sh`
//! started (failing loudly when they are missing) and an SDK client for them.

// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

pub mod proxy;
#[cfg(feature = "s3")]
pub mod s3;

#[cfg(feature = "dynamodb")]
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
#[cfg(feature = "dynamodb")]
use aws_sdk_dynamodb::types::AttributeValue;
#[cfg(feature = "dynamodb")]
use std::collections::HashMap;
use std::time::Duration;

/// What to do when a service is missing.
pub const HINT: &str = "start the services with `eval \"$(scripts/services.sh start)\"` \
                        (or set STATELOCK_SKIP_SERVICE_TESTS=1 to skip the service tests)";

/// `host:port` of an `http://` endpoint.
pub fn authority(endpoint: &str) -> &str {
    endpoint
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
}

/// The endpoint in the environment variable `var`, or `None` when the
/// service tests are explicitly skipped (`STATELOCK_SKIP_SERVICE_TESTS=1`).
/// Panics, failing the test, if it is unset or nothing answers there.
pub fn service(var: &str) -> Option<String> {
    if std::env::var("STATELOCK_SKIP_SERVICE_TESTS").as_deref() == Ok("1") {
        eprintln!("skipped: STATELOCK_SKIP_SERVICE_TESTS=1 (service tests not run)");
        return None;
    }
    let endpoint = std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: {HINT}"));
    let reachable = std::net::ToSocketAddrs::to_socket_addrs(authority(&endpoint))
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
        });
    assert!(reachable, "nothing answers at {endpoint} ({var}): {HINT}");
    Some(endpoint)
}

/// A fresh SDK client (its own connection pool) with test credentials.
#[cfg(feature = "dynamodb")]
pub fn sdk_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            "test",
            "test",
            None,
            None,
            "statelock-tests",
        ))
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// The item of `table` whose hash key `key_attr` is `key`, read consistently.
#[cfg(feature = "dynamodb")]
pub async fn raw_item(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    key_attr: &str,
    key: &str,
) -> Option<HashMap<String, AttributeValue>> {
    client
        .get_item()
        .table_name(table)
        .key(key_attr, AttributeValue::S(key.to_string()))
        .consistent_read(true)
        .send()
        .await
        .expect("get item")
        .item()
        .cloned()
}

/// An `http://127.0.0.1:PORT` endpoint where nothing listens (a port the
/// OS just handed out and that was closed again): connecting is refused.
pub fn closed_port_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

/// An `http://127.0.0.1:PORT` endpoint that accepts connections and never
/// answers (the connections are held open until the test process exits).
pub fn silent_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut open = Vec::new();
        for conn in listener.incoming() {
            open.push(conn);
        }
    });
    format!("http://{addr}")
}

/// Asserts that `text` is one readable line: no line break, under 500
/// characters (a message may quote a whole store URL), and none of the
/// SDK's debug output.
pub fn assert_one_readable_line(text: &str) {
    assert!(!text.contains('\n'), "more than one line: {text}");
    assert!(text.len() < 500, "{} characters: {text}", text.len());
    for debug in [
        "DispatchFailure",
        "ConnectorError",
        "{ ",
        "Some(",
        "Request {",
        "SdkBody",
    ] {
        assert!(!text.contains(debug), "debug text {debug:?} in: {text}");
    }
}
