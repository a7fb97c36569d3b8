//! Real processes: `shopfast users` and `shopfast products` started as their own
//! processes, called by a gRPC client nobody here wrote (Python grpcio, learning
//! the API through server reflection), and stopped with SIGTERM.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::process::Command;

use serde_json::Value;
use support::Proc;

const REFLECT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/grpc_reflect.py");

fn service(name: &str, extra: &[&str]) -> Proc {
    let mut args = vec![name, "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Proc::start(&args)
}

/// Runs the reflection client; `Ok(stdout)` on success, `Err(stdout)` on a gRPC error.
fn reflect(addr: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("python3").arg(REFLECT).arg(addr).args(args).output().expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => Ok(stdout),
        Some(1) => Err(stdout),
        _ => panic!("grpc_reflect.py failed: {stdout}{stderr}"),
    }
}

fn python_grpc_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import grpc, grpc_reflection, google.protobuf"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        if kit::testing::running_in_ci() {
            panic!(
                "python3 with grpcio and grpcio-reflection is required in CI: pip install -r scripts/requirements.txt"
            );
        }
        eprintln!("SKIPPED: python grpcio missing (pip install -r scripts/requirements.txt)");
    }
    ok
}

#[test]
fn python_grpcio_calls_users_and_products_through_reflection() {
    if !python_grpc_available() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let users = service("users", &["--data-dir", data_dir]);
    let products = service("products", &["--data-dir", data_dir]);

    let listed = reflect(&users.addr("grpc_addr"), &["list"]).unwrap();
    assert!(listed.contains("shopfast.users.v1.UserService"), "{listed}");
    assert!(!listed.contains("ProductService"), "only what this process serves: {listed}");

    const USERS: &str = "shopfast.users.v1.UserService";
    let created = reflect(
        &users.addr("grpc_addr"),
        &["call", USERS, "CreateUser", r#"{"email":"py@example.com","password":"from python 1","name":"Py"}"#],
    )
    .unwrap();
    let created: Value = serde_json::from_str(&created).unwrap();
    assert_eq!(created["email"], "py@example.com");
    let login = reflect(
        &users.addr("grpc_addr"),
        &["call", USERS, "AuthenticateUser", r#"{"email":"py@example.com","password":"from python 1"}"#],
    )
    .unwrap();
    assert!(login.contains("accessToken"), "{login}");
    let refused = reflect(&users.addr("grpc_addr"), &["call", USERS, "CreateUser", r#"{"email":"nope"}"#]).unwrap_err();
    assert!(refused.starts_with("ERROR INVALID_ARGUMENT"), "{refused}");

    const PRODUCTS: &str = "shopfast.products.v1.ProductService";
    let page = reflect(
        &products.addr("grpc_addr"),
        &["call", PRODUCTS, "SearchProducts", r#"{"pageSize":3,"category":"books"}"#],
    )
    .unwrap();
    let page: Value = serde_json::from_str(&page).unwrap();
    assert_eq!(page["products"].as_array().unwrap().len(), 3);
    assert_eq!(page["totalSize"], "10", "int64 is a string in proto3 JSON");
    let missing =
        reflect(&products.addr("grpc_addr"), &["call", PRODUCTS, "GetProduct", r#"{"productId":"nope"}"#]).unwrap_err();
    assert!(missing.starts_with("ERROR NOT_FOUND"), "{missing}");

    assert!(users.terminate().success(), "SIGTERM is a clean exit");
    assert!(products.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_runs_on_postgresql_with_the_same_code() {
    let Some(db) = kit::testing::TestDb::postgres().await else { return };
    let products = service("products", &["--database-url", &db.url]);
    let mut client = contracts_client(&products.addr("grpc_addr")).await;
    let page = client
        .search_products(contracts::products::v1::SearchProductsRequest { page_size: 100, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(page.total_size >= 50, "seeded into PostgreSQL");
    // Close the connection first (a worker thread runs its task): an open
    // idle connection would keep the server draining until its grace ends.
    drop(client);
    assert!(products.terminate().success());
    db.cleanup().await;
}

async fn contracts_client(
    addr: &str,
) -> contracts::products::v1::product_service_client::ProductServiceClient<tonic::transport::Channel> {
    contracts::products::v1::product_service_client::ProductServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
}
