//! Every UserService method over a real socket, happy paths and garbage.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use contracts::common::v1::Address;
use contracts::users::v1 as pb;
use contracts::users::v1::user_service_client::UserServiceClient;
use kit::testing::{TestDb, expect_code, service_common};
use kit::token::TokenSigner;
use tonic::Code;
use tonic::transport::Channel;

struct Harness {
    client: UserServiceClient<Channel>,
    service: kit::server::RunningService,
    _db: TestDb,
}

#[tokio::test]
async fn users_refuses_to_start_without_a_token_secret() {
    let db = TestDb::sqlite();
    let config = users::UsersConfig { common: service_common(&db.url), ..Default::default() };
    let err = users::start(config, kit::shutdown::CancellationToken::new()).await.err().expect("refused");
    assert!(err.to_string().contains("no token_secret configured"), "{err}");
}

async fn start() -> Harness {
    let db = TestDb::sqlite();
    let config = users::UsersConfig {
        common: service_common(&db.url),
        token_secret: kit::testing::test_token_secret(),
        ..Default::default()
    };
    let service = users::start(config, kit::shutdown::CancellationToken::new()).await.expect("start users");
    let client = UserServiceClient::connect(service.grpc_url()).await.expect("connect");
    Harness { client, service, _db: db }
}

fn create_request(email: &str) -> pb::CreateUserRequest {
    pb::CreateUserRequest { email: email.into(), password: "hunter2hunter2".into(), name: "Ada".into(), address: None }
}

fn address() -> Address {
    Address {
        line1: "1 Main St".into(),
        line2: String::new(),
        city: "Springfield".into(),
        region: "IL".into(),
        postal_code: "62701".into(),
        country_code: "us".into(),
    }
}

#[tokio::test]
async fn register_login_profile_and_validate() {
    let mut h = start().await;
    let user = h.client.create_user(create_request("Ada@Example.com")).await.unwrap().into_inner();
    assert_eq!(user.email, "ada@example.com");
    assert!(user.active && user.create_time.is_some());

    let login = h
        .client
        .authenticate_user(pb::AuthenticateUserRequest {
            email: " ADA@example.com".into(),
            password: "hunter2hunter2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(login.token_type, "Bearer");
    let signer = TokenSigner::new(kit::testing::TEST_TOKEN_SECRET.as_bytes()).unwrap();
    let claims = signer.verify(&login.access_token, kit_core::time::now_millis() / 1000).unwrap();
    assert_eq!(claims.sub, user.id);
    assert_eq!(login.expire_time.unwrap().seconds, claims.exp);

    let fetched = h.client.get_user(pb::GetUserRequest { user_id: user.id.clone() }).await.unwrap().into_inner();
    assert_eq!(fetched, user);

    let updated = h
        .client
        .update_user(pb::UpdateUserRequest {
            user_id: user.id.clone(),
            name: Some("Ada L.".into()),
            address: Some(address()),
            active: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.name, "Ada L.");
    assert_eq!(updated.address.as_ref().unwrap().country_code, "US");

    let valid =
        h.client.validate_user(pb::ValidateUserRequest { user_id: user.id.clone() }).await.unwrap().into_inner();
    assert_eq!((valid.user_id.as_str(), valid.address.unwrap().city.as_str()), (user.id.as_str(), "Springfield"));

    // Closing the account: validation and login are refused, the profile remains.
    h.client
        .update_user(pb::UpdateUserRequest { user_id: user.id.clone(), active: Some(false), ..Default::default() })
        .await
        .unwrap();
    expect_code(
        h.client.validate_user(pb::ValidateUserRequest { user_id: user.id.clone() }).await,
        Code::FailedPrecondition,
    );
    expect_code(
        h.client
            .authenticate_user(pb::AuthenticateUserRequest {
                email: "ada@example.com".into(),
                password: "hunter2hunter2".into(),
            })
            .await,
        Code::Unauthenticated,
    );
    assert!(!h.client.get_user(pb::GetUserRequest { user_id: user.id }).await.unwrap().into_inner().active);
    h.service.stop().await.unwrap();
}

#[tokio::test]
async fn garbage_input_gets_clear_errors() {
    let mut h = start().await;
    let huge = "x".repeat(10_000);
    for bad in [
        pb::CreateUserRequest { email: String::new(), ..create_request("") },
        pb::CreateUserRequest { password: "short".into(), ..create_request("a@example.com") },
        pb::CreateUserRequest { password: "lettersonly".into(), ..create_request("a@example.com") },
        pb::CreateUserRequest { password: huge.clone(), ..create_request("a@example.com") },
        pb::CreateUserRequest { name: "  ".into(), ..create_request("a@example.com") },
        pb::CreateUserRequest { email: huge.clone(), ..create_request("") },
        pb::CreateUserRequest {
            address: Some(Address { city: "Nowhere".into(), ..Default::default() }),
            ..create_request("a@example.com")
        },
    ] {
        let message = expect_code(h.client.create_user(bad.clone()).await, Code::InvalidArgument);
        assert!(!message.is_empty(), "{bad:?}");
    }
    // Nothing half-written: the valid email is still free.
    let user = h.client.create_user(create_request("a@example.com")).await.unwrap().into_inner();
    expect_code(h.client.create_user(create_request("A@EXAMPLE.COM")).await, Code::AlreadyExists);

    for id in [String::new(), "   ".into(), huge.clone()] {
        expect_code(h.client.get_user(pb::GetUserRequest { user_id: id.clone() }).await, Code::InvalidArgument);
        expect_code(
            h.client.validate_user(pb::ValidateUserRequest { user_id: id.clone() }).await,
            Code::InvalidArgument,
        );
        expect_code(
            h.client.update_user(pb::UpdateUserRequest { user_id: id, ..Default::default() }).await,
            Code::InvalidArgument,
        );
    }
    expect_code(h.client.get_user(pb::GetUserRequest { user_id: "no-such-user".into() }).await, Code::NotFound);
    expect_code(
        h.client.validate_user(pb::ValidateUserRequest { user_id: "no-such-user".into() }).await,
        Code::NotFound,
    );
    expect_code(
        h.client.update_user(pb::UpdateUserRequest { user_id: "no-such-user".into(), ..Default::default() }).await,
        Code::NotFound,
    );
    expect_code(
        h.client
            .update_user(pb::UpdateUserRequest {
                user_id: user.id.clone(),
                name: Some(String::new()),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    expect_code(
        h.client
            .update_user(pb::UpdateUserRequest {
                user_id: user.id.clone(),
                address: Some(Address { country_code: "USA".into(), ..address() }),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );

    // Wrong password, unknown email, malformed email and an oversized password
    // are indistinguishable.
    let attempts = [
        ("a@example.com", "wrong-password-1"),
        ("nobody@example.com", "hunter2hunter2"),
        ("not an email", "hunter2hunter2"),
        ("a@example.com", huge.as_str()),
        ("", ""),
    ];
    let mut messages = Vec::new();
    for (email, password) in attempts {
        let request = pb::AuthenticateUserRequest { email: email.into(), password: password.into() };
        messages.push(expect_code(h.client.authenticate_user(request).await, Code::Unauthenticated));
    }
    messages.dedup();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(h.client.get_user(pb::GetUserRequest { user_id: user.id }).await.unwrap().into_inner().name, "Ada");
    h.service.stop().await.unwrap();
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let mut h = start().await;
    let channel = Channel::from_shared(h.service.grpc_url()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", contracts::service_names::USERS] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest { service: service.into() })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    }
    h.client.get_user(pb::GetUserRequest { user_id: "nobody".into() }).await.unwrap_err();

    let admin = format!("http://{}", h.service.admin_addr);
    let http = reqwest::Client::new();
    assert_eq!(http.get(format!("{admin}/health/live")).send().await.unwrap().status(), 200);
    let ready = http.get(format!("{admin}/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = http.get(format!("{admin}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(r#"grpc_server_requests_total{service="users",method="/shopfast.users.v1.UserService/GetUser",code="NotFound"}"#),
        "{metrics}"
    );
    assert_eq!(http.get(format!("{admin}/nope")).send().await.unwrap().status(), 404);

    let addr = h.service.grpc_addr;
    h.service.stop().await.unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the gRPC port is closed after stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    let h = start().await;
    // Registrations hash with argon2 (tens of ms each, two cores): the stop
    // begins once all twenty reached the server, most still running.
    let answered = Arc::new(AtomicUsize::new(0));
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let mut client = h.client.clone();
            let answered = answered.clone();
            tokio::spawn(async move {
                let result = client.create_user(create_request(&format!("drain{i}@example.com"))).await;
                answered.fetch_add(1, Ordering::AcqRel);
                result
            })
        })
        .collect();
    let started = std::time::Instant::now();
    let running = loop {
        let running = h.service.in_flight().expect("shedding (which counts calls) is on");
        if running + answered.load(Ordering::Acquire) >= 20 {
            break running;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "the calls never reached the server");
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    };
    assert!(running > 0, "calls still running when the stop begins");
    let stopping = tokio::spawn(h.service.stop());
    let mut completed = 0;
    for call in calls {
        call.await.unwrap().expect("an in-flight request was cut off by the shutdown");
        completed += 1;
    }
    stopping.await.unwrap().unwrap();
    assert_eq!(completed, 20);
}
