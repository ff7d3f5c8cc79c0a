//! The stand-in services that the Kafka and MongoDB tests use are up. `scripts/test.sh`
//! installs and starts them; run the suite through it, or export KAFKA_BOOTSTRAP and
//! MONGODB_URI for servers of your own. These tests fail, never skip, when one is missing.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

fn reachable(var: &str, addr: &str) {
    let addrs: Vec<_> = addr.to_socket_addrs().unwrap_or_else(|e| panic!("{var}={addr} is not host:port ({e})")).collect();
    assert!(
        addrs.iter().any(|a| TcpStream::connect_timeout(a, Duration::from_secs(5)).is_ok()),
        "{var}={addr} does not accept connections; start the services with `eval \"$(scripts/services.sh start)\"` \
         (after `scripts/services.sh install`), or run the tests with scripts/test.sh"
    );
}

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests with scripts/test.sh, which installs and starts the services, or export {var} yourself")
    })
}

#[test]
fn kafka_broker_is_up() {
    let bootstrap = env("KAFKA_BOOTSTRAP");
    reachable("KAFKA_BOOTSTRAP", bootstrap.split(',').next().unwrap());
}

#[test]
fn mongodb_server_is_up() {
    let uri = env("MONGODB_URI");
    let host = uri
        .strip_prefix("mongodb://")
        .and_then(|r| r.rsplit('@').next())
        .and_then(|r| r.split(['/', '?']).next())
        .unwrap_or_else(|| panic!("MONGODB_URI={uri} is not a mongodb:// URI"));
    reachable("MONGODB_URI", host.split(',').next().unwrap());
}
