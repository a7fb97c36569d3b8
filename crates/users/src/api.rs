//! gRPC handlers: translate protobuf to domain calls and results back.
use contracts::common::v1 as common;
use contracts::users::v1 as pb;
use kit::error::status;
use pb::user_service_server::UserService;
use tonic::{Request, Response, Status};

use crate::domain::{self, Address, DomainError, ProfileChanges, User};
use crate::password;
use crate::store::UserStore;
use contracts::time::timestamp_from_millis;
use kit::token::TokenSigner;
use kit_core::time::now_millis;

pub struct UsersApi {
    store: UserStore,
    signer: TokenSigner,
    token_ttl_secs: i64,
}

impl UsersApi {
    pub fn new(store: UserStore, signer: TokenSigner, token_ttl_secs: i64) -> Self {
        Self { store, signer, token_ttl_secs }
    }
}

fn address_from_pb(a: Option<common::Address>) -> Address {
    a.map(|a| Address {
        line1: a.line1,
        line2: a.line2,
        city: a.city,
        region: a.region,
        postal_code: a.postal_code,
        country_code: a.country_code,
    })
    .unwrap_or_default()
}

fn address_to_pb(a: Address) -> Option<common::Address> {
    (!a.is_empty()).then_some(common::Address {
        line1: a.line1,
        line2: a.line2,
        city: a.city,
        region: a.region,
        postal_code: a.postal_code,
        country_code: a.country_code,
    })
}

fn user_to_pb(u: User) -> pb::User {
    pb::User {
        id: u.id,
        email: u.email,
        name: u.name,
        address: address_to_pb(u.address),
        active: u.active,
        create_time: Some(timestamp_from_millis(u.created_at)),
        update_time: Some(timestamp_from_millis(u.updated_at)),
    }
}

fn login_refused() -> Status {
    // One message for unknown email, wrong password and closed account.
    status(DomainError::Unauthenticated("invalid email or password".into()))
}

#[tonic::async_trait]
impl UserService for UsersApi {
    async fn create_user(&self, request: Request<pb::CreateUserRequest>) -> Result<Response<pb::User>, Status> {
        let r = request.into_inner();
        let registration =
            domain::register(&r.email, &r.password, &r.name, address_from_pb(r.address)).map_err(status)?;
        let hash = password::hash(r.password).await.map_err(kit::error::internal)?;
        let user = self.store.create(&registration, &hash, now_millis()).await?;
        tracing::info!(user_id = %user.id, "user registered");
        Ok(Response::new(user_to_pb(user)))
    }

    async fn authenticate_user(
        &self,
        request: Request<pb::AuthenticateUserRequest>,
    ) -> Result<Response<pb::AuthenticateUserResponse>, Status> {
        let r = request.into_inner();
        if r.password.len() > domain::MAX_PASSWORD_BYTES {
            return Err(login_refused());
        }
        let found = match domain::normalize_email(&r.email) {
            Ok(email) => self.store.credentials(&email).await?,
            Err(_) => None,
        };
        let (user, hash) = match found {
            Some((user, hash)) => (Some(user), Some(hash)),
            None => (None, None),
        };
        let matches = password::verify(r.password, hash).await.map_err(kit::error::internal)?;
        let user = match user {
            Some(user) if matches && user.active => user,
            _ => return Err(login_refused()),
        };
        let now_secs = now_millis() / 1000;
        let (token, claims) = self.signer.issue(&user.id, &user.email, now_secs, self.token_ttl_secs);
        tracing::info!(user_id = %user.id, "user authenticated");
        Ok(Response::new(pb::AuthenticateUserResponse {
            access_token: token,
            token_type: "Bearer".into(),
            expire_time: Some(timestamp_from_millis(claims.exp * 1000)),
            user: Some(user_to_pb(user)),
        }))
    }

    async fn get_user(&self, request: Request<pb::GetUserRequest>) -> Result<Response<pb::User>, Status> {
        let id = request.into_inner().user_id;
        domain::validate_user_id(&id).map_err(status)?;
        match self.store.get(&id).await? {
            Some(user) => Ok(Response::new(user_to_pb(user))),
            None => Err(status(DomainError::NotFound(format!("user {id} not found")))),
        }
    }

    async fn update_user(&self, request: Request<pb::UpdateUserRequest>) -> Result<Response<pb::User>, Status> {
        let r = request.into_inner();
        domain::validate_user_id(&r.user_id).map_err(status)?;
        let changes =
            ProfileChanges { name: r.name, address: r.address.map(|a| address_from_pb(Some(a))), active: r.active }
                .validate()
                .map_err(status)?;
        let user = self.store.update(&r.user_id, changes, now_millis()).await?;
        Ok(Response::new(user_to_pb(user)))
    }

    async fn validate_user(
        &self,
        request: Request<pb::ValidateUserRequest>,
    ) -> Result<Response<pb::ValidateUserResponse>, Status> {
        let id = request.into_inner().user_id;
        domain::validate_user_id(&id).map_err(status)?;
        let user = domain::check_active(self.store.get(&id).await?, &id).map_err(status)?;
        Ok(Response::new(pb::ValidateUserResponse {
            user_id: user.id,
            email: user.email,
            name: user.name,
            address: address_to_pb(user.address),
        }))
    }
}
