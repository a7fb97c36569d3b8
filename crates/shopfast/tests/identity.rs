//! Service identity between processes, with real certificates: mutual TLS on
//! every gRPC port and on the registry, who may call which method (declared
//! in the contracts), who may act for a user, who may register as what, and
//! certificates rotated without a restart.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use contracts::payments::v1 as payments_pb;
use contracts::payments::v1::payment_service_client::PaymentServiceClient;
use contracts::products::v1 as products_pb;
use contracts::products::v1::product_service_client::ProductServiceClient;
use kit_client::balance::Balancer;
use kit_client::discovery::DiscoveryError;
use kit_tls::{Tls, TlsConfig};
use registry_wire::wire::{Health, InstanceInfo, RegisterRequest};
use support::{Proc, SHOPFAST};
use tonic::Code;

fn certs(dir: &Path, identities: &[&str]) {
    let mut args = vec!["certs".to_string(), "--dir".into(), dir.display().to_string()];
    for identity in identities {
        args.extend(["--identity".into(), identity.to_string()]);
    }
    let out = std::process::Command::new(SHOPFAST).args(&args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn tls(dir: &Path, identity: &str) -> Arc<Tls> {
    Tls::from_config(&TlsConfig::in_dir(dir), identity).unwrap().unwrap()
}

/// A balancer over one instance of `service`, reached as `identity` (or in plain text).
fn channel(service: &str, address: &str, caller: Option<Arc<Tls>>) -> Balancer {
    let balancer = Balancer::with_tls(service, caller);
    balancer.update(&[InstanceInfo {
        id: "one".into(),
        name: service.into(),
        address: address.into(),
        admin_address: String::new(),
        health: Health::Healthy,
        metadata: BTreeMap::new(),
        version: "v1".into(),
        track: "stable".into(),
        registered_at_ms: 1,
    }]);
    balancer
}

fn payments_as(caller: Option<Arc<Tls>>, address: &str) -> PaymentServiceClient<Balancer> {
    PaymentServiceClient::new(channel("payments", address, caller))
}

fn with_user<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("x-user-id", "u-1".parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_right_identities_reach_a_method_act_for_users_or_register() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("tls");
    certs(&dir, &[]);
    let tls_dir = dir.to_str().unwrap();
    let registry = Proc::start(&["registry", "--addr", "127.0.0.1:0", "--tls-dir", tls_dir]);
    let registry_url = format!("https://{}", registry.addr("addr"));
    let payments = Proc::service("payments", data.path(), &registry_url, &["--tls-dir", tls_dir]);
    let products = Proc::service("products", data.path(), &registry_url, &["--tls-dir", tls_dir]);
    let (payments_addr, products_addr) = (payments.addr("grpc_addr"), products.addr("grpc_addr"));

    // Without a certificate, or with one from another CA: no connection at all.
    let plain = payments_as(None, &payments_addr).get_payment(payments_pb::GetPaymentRequest::default()).await;
    assert_eq!(plain.unwrap_err().code(), Code::Unavailable);
    let rogue_dir = data.path().join("rogue");
    certs(&rogue_dir, &["orders"]);
    let rogue = payments_as(Some(tls(&rogue_dir, "orders")), &payments_addr);
    let refused = rogue.clone().get_payment(payments_pb::GetPaymentRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

    // With the stack's certificates: the contracts say who may call what.
    let garbage = payments_pb::ProcessPaymentRequest::default();
    let as_orders = payments_as(Some(tls(&dir, "orders")), &payments_addr);
    let ran = as_orders.clone().process_payment(garbage.clone()).await.unwrap_err();
    assert_eq!(ran.code(), Code::InvalidArgument, "orders reaches ProcessPayment (and its checks): {ran:?}");
    let as_gateway = payments_as(Some(tls(&dir, "gateway")), &payments_addr);
    for denied in [
        as_gateway.clone().process_payment(garbage.clone()).await.unwrap_err(),
        as_gateway.clone().void_order_payments(payments_pb::VoidOrderPaymentsRequest::default()).await.unwrap_err(),
        payments_as(Some(tls(&dir, "products")), &payments_addr)
            .get_payment(payments_pb::GetPaymentRequest::default())
            .await
            .unwrap_err(),
    ] {
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    }
    // The gateway may read a payment, but not act for a user here.
    let read = as_gateway.clone().get_payment(payments_pb::GetPaymentRequest::default()).await.unwrap_err();
    assert_eq!(read.code(), Code::InvalidArgument, "{read:?}");
    let acting =
        as_gateway.clone().get_payment(with_user(payments_pb::GetPaymentRequest::default())).await.unwrap_err();
    assert_eq!(acting.code(), Code::PermissionDenied);
    assert_eq!(
        kit_resilience::signals::reason(&acting),
        Some(kit_core::reason::Reason::UserAssertionForbidden),
        "{acting:?}"
    );
    // Products believes the gateway's x-user-id.
    let mut as_gateway_products =
        ProductServiceClient::new(channel("products", &products_addr, Some(tls(&dir, "gateway"))));
    let search = products_pb::SearchProductsRequest { page_size: 1, ..Default::default() };
    assert!(as_gateway_products.search_products(with_user(search)).await.is_ok());
    // The operator may call anything.
    let as_operator = payments_as(Some(tls(&dir, "operator")), &payments_addr);
    assert_eq!(
        as_operator
            .clone()
            .void_order_payments(payments_pb::VoidOrderPaymentsRequest::default())
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    // Refusals are counted.
    let metrics =
        reqwest::get(format!("http://{}/metrics", payments.addr("admin_addr"))).await.unwrap().text().await.unwrap();
    let denied: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("access_denied_total{") && l.contains(r#"caller="gateway""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(denied, 3.0, "{metrics}");

    // The registry: a registration names the service its certificate proves.
    let register = |caller: Option<Arc<Tls>>, name: &str| {
        let client = kit_client::discovery::RegistryClient::with_tls(&registry_url, caller);
        let request = RegisterRequest { name: name.into(), address: "127.0.0.1:1".into(), ..Default::default() };
        async move { client.register(&request).await }
    };
    let impostor = register(Some(tls(&dir, "products")), "payments").await.unwrap_err();
    assert!(matches!(&impostor, DiscoveryError::Refused { status: 403, .. }), "{impostor}");
    assert!(impostor.to_string().contains("products may not register"), "the refusal names who tried: {impostor}");
    // Without a certificate: refused, or not even let through the handshake.
    let anonymous = register(None, "payments").await.unwrap_err();
    assert!(
        matches!(&anonymous, DiscoveryError::Refused { status: 403, .. } | DiscoveryError::Unreachable { .. }),
        "{anonymous}"
    );
    let own = register(Some(tls(&dir, "payments")), "payments").await.unwrap();
    // Someone else cannot take it down or make it beat.
    let as_products = kit_client::discovery::RegistryClient::with_tls(&registry_url, Some(tls(&dir, "products")));
    let drop_it = as_products.deregister(&own.id, Duration::from_secs(2)).await.unwrap_err();
    assert!(matches!(&drop_it, DiscoveryError::Refused { status: 403, .. }), "{drop_it}");
    // Reading needs no certificate, only trust in the registry's.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(dir.join("ca.pem")).unwrap()).unwrap();
    let reader = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();
    let services = reader.get(format!("{registry_url}/v1/services/payments")).send().await.unwrap();
    assert!(services.status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_are_picked_up_without_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let (old, new) = (data.path().join("old"), data.path().join("new"));
    certs(&old, &["payments", "orders"]);
    certs(&new, &["payments", "orders"]);
    // Payments runs from its own copy of the old set (checked every 5 s, the default).
    let live = data.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    // Each generation of files gets its own modification time (what the
    // reloader watches), a minute apart: distinct even where the file
    // system keeps whole seconds, with no waiting for the clock.
    let copy = |from: &Path, generation: u64| {
        let stamp = std::time::SystemTime::now() + Duration::from_secs(60 * generation);
        for file in ["ca.pem", "payments.pem", "payments-key.pem"] {
            // Written aside and renamed: a reader never sees half a file.
            let aside = live.join(format!("{file}.tmp"));
            std::fs::copy(from.join(file), &aside).unwrap();
            std::fs::File::options().write(true).open(&aside).unwrap().set_modified(stamp).unwrap();
            std::fs::rename(&aside, live.join(file)).unwrap();
        }
    };
    copy(&old, 0);
    let payments = Proc::start(&[
        "payments",
        "--grpc-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--data-dir",
        data.path().to_str().unwrap(),
        "--tls-dir",
        live.to_str().unwrap(),
    ]);
    let address = payments.addr("grpc_addr");
    let call = |dir: &Path| {
        let client = payments_as(Some(tls(dir, "orders")), &address);
        async move { client.clone().get_payment(payments_pb::GetPaymentRequest::default()).await.unwrap_err().code() }
    };
    assert_eq!(call(&old).await, Code::InvalidArgument, "the old set works");
    assert_eq!(call(&new).await, Code::Unavailable, "the new CA is not trusted yet");
    // Rotate: the new CA and certificate, in place.
    copy(&new, 1);
    support::eventually(Duration::from_secs(15), "the new certificates in use", || async {
        call(&new).await == Code::InvalidArgument
    })
    .await;
    assert_eq!(call(&old).await, Code::Unavailable, "the old CA is gone");
}
