//! The Users service: registration with argon2id, login returning a signed
//! expiring token, profiles with an address, and ValidateUser for the saga.
//!
//! `domain` holds the rules, `store` persists, `api` translates gRPC.
pub mod api;
pub mod domain;
pub mod password;
pub mod store;

use serde::{Deserialize, Serialize};

use kit::config::ServiceCommon;
use kit::db::{Db, DbOptions};
use kit::server::{Host, RunningService, ServiceSpec, StartError};
use kit::shutdown::CancellationToken;

pub const SERVICE: &str = "users";
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct UsersConfig {
    #[serde(flatten)]
    pub common: ServiceCommon,
    /// HMAC secret for access tokens (at least 32 bytes), shared with the gateway.
    pub token_secret: Option<kit::config::Secret>,
    pub token_ttl_secs: u64,
}

impl Default for UsersConfig {
    fn default() -> Self {
        Self { common: ServiceCommon::with_ports(9001, 9101), token_secret: None, token_ttl_secs: 3_600 }
    }
}

pub async fn start(config: UsersConfig, shutdown: CancellationToken) -> Result<RunningService, StartError> {
    if config.token_ttl_secs == 0 {
        return Err(StartError::Config("token_ttl_secs must be positive".into()));
    }
    let signer =
        kit::token::signer_from_config(config.token_secret.as_ref()).map_err(|e| StartError::Config(e.to_string()))?;
    let spec = ServiceSpec {
        name: SERVICE,
        grpc_services: &[contracts::service_names::USERS],
        descriptor_set: contracts::FILE_DESCRIPTOR_SET,
    };
    let host = Host::bind(spec, &config.common, shutdown.clone()).await?;
    let db = Db::open(&config.common.database_url_for(SERVICE), &DbOptions::default(), &MIGRATOR).await?;
    host.readiness().require_database(&db);
    let api = api::UsersApi::new(store::UserStore::new(db.clone()), signer, config.token_ttl_secs as i64);
    let service = contracts::users::v1::user_service_server::UserServiceServer::new(api);
    let mut running = host.start(tonic::service::Routes::new(service)).await?;
    running.own_database(db);
    Ok(running)
}
