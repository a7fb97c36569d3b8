//! gRPC handlers: translate protobuf to domain calls and results back. No rules here.
use contracts::common::v1::Money;
use contracts::products::v1 as pb;
use kit::error::status;
use pb::product_service_server::ProductService;
use tonic::{Request, Response, Status};

use crate::catalog::Catalog;
use crate::domain::{self, DomainError, NewProduct, Product, Reservation, ReservationState, SearchFilter, Sort};
use contracts::time::timestamp_from_millis;
use kit_core::time::now_millis;

pub const MAX_BATCH_IDS: usize = 100;

#[derive(Clone, Debug)]
pub struct ReservationPolicy {
    pub default_ttl_ms: i64,
    pub max_ttl_ms: i64,
}

pub struct ProductsApi {
    catalog: Catalog,
    policy: ReservationPolicy,
}

impl ProductsApi {
    pub fn new(catalog: Catalog, policy: ReservationPolicy) -> Self {
        Self { catalog, policy }
    }
}

fn to_pb(p: Product) -> pb::Product {
    let available = p.available();
    pb::Product {
        id: p.id,
        sku: p.sku,
        name: p.name,
        description: p.description,
        category: p.category,
        price: Some(Money { currency_code: p.currency_code, minor_units: p.price_minor }),
        image_url: p.image_url,
        weight_grams: p.weight_grams,
        dimensions: Some(pb::Dimensions {
            length_mm: p.dimensions.length_mm,
            width_mm: p.dimensions.width_mm,
            height_mm: p.dimensions.height_mm,
        }),
        stock: p.stock,
        reserved: p.reserved,
        available,
        sold: p.sold,
        active: p.active,
        create_time: Some(timestamp_from_millis(p.created_at)),
        update_time: Some(timestamp_from_millis(p.updated_at)),
    }
}

fn reservation_to_pb(r: Reservation) -> pb::Reservation {
    let state = match r.state {
        ReservationState::Active => pb::ReservationState::Active,
        ReservationState::Committed => pb::ReservationState::Committed,
        ReservationState::Released => pb::ReservationState::Released,
        ReservationState::Expired => pb::ReservationState::Expired,
        ReservationState::Restocked => pb::ReservationState::Restocked,
    };
    pb::Reservation {
        order_id: r.order_id,
        state: state as i32,
        items: r.items.into_iter().map(|(product_id, quantity)| pb::LineItem { product_id, quantity }).collect(),
        expire_time: Some(timestamp_from_millis(r.expires_at)),
        create_time: Some(timestamp_from_millis(r.created_at)),
        update_time: Some(timestamp_from_millis(r.updated_at)),
    }
}

fn items_from_pb(items: Vec<pb::LineItem>) -> Vec<(String, i64)> {
    items.into_iter().map(|i| (i.product_id, i.quantity)).collect()
}

fn sort_from_pb(value: i32) -> Result<Sort, Status> {
    match pb::SortOrder::try_from(value) {
        Ok(pb::SortOrder::Unspecified | pb::SortOrder::Name) => Ok(Sort::Name),
        Ok(pb::SortOrder::PriceAsc) => Ok(Sort::PriceAsc),
        Ok(pb::SortOrder::PriceDesc) => Ok(Sort::PriceDesc),
        Ok(pb::SortOrder::Newest) => Ok(Sort::Newest),
        Err(_) => Err(status(DomainError::invalid(format!("unknown sort order {value}")))),
    }
}

#[tonic::async_trait]
impl ProductService for ProductsApi {
    async fn get_product(&self, request: Request<pb::GetProductRequest>) -> Result<Response<pb::Product>, Status> {
        let id = request.into_inner().product_id;
        domain::validate_id("product_id", &id).map_err(status)?;
        match self.catalog.get(&id).await? {
            Some(product) => Ok(Response::new(to_pb(product))),
            None => Err(status(DomainError::NotFound(format!("product {id} not found")))),
        }
    }

    async fn get_products(
        &self,
        request: Request<pb::GetProductsRequest>,
    ) -> Result<Response<pb::GetProductsResponse>, Status> {
        let ids = request.into_inner().product_ids;
        if ids.len() > MAX_BATCH_IDS {
            return Err(status(DomainError::invalid(format!("at most {MAX_BATCH_IDS} product_ids per request"))));
        }
        for id in &ids {
            domain::validate_id("product_ids", id).map_err(status)?;
        }
        let products = self.catalog.get_many(&ids).await?;
        let missing_ids = ids.iter().filter(|id| !products.iter().any(|p| &p.id == *id)).cloned().collect();
        Ok(Response::new(pb::GetProductsResponse { products: products.into_iter().map(to_pb).collect(), missing_ids }))
    }

    async fn search_products(
        &self,
        request: Request<pb::SearchProductsRequest>,
    ) -> Result<Response<pb::SearchProductsResponse>, Status> {
        let r = request.into_inner();
        let filter = SearchFilter {
            query: r.query,
            category: r.category,
            min_price_minor: r.min_price_minor,
            max_price_minor: r.max_price_minor,
            in_stock_only: r.in_stock_only,
            sort: sort_from_pb(r.sort)?,
        }
        .validate()
        .map_err(status)?;
        let fingerprint = filter.fingerprint();
        let page = kit_core::pagination::resolve(r.page_size, &r.page_token, fingerprint)
            .map_err(|e| status(DomainError::invalid(e.to_string())))?;
        let (products, total) = self.catalog.search(&filter, page).await?;
        Ok(Response::new(pb::SearchProductsResponse {
            products: products.into_iter().map(to_pb).collect(),
            next_page_token: kit_core::pagination::next_token(page, total, fingerprint),
            total_size: total,
        }))
    }

    async fn create_product(
        &self,
        request: Request<pb::CreateProductRequest>,
    ) -> Result<Response<pb::Product>, Status> {
        let p = request.into_inner().product.ok_or_else(|| status(DomainError::invalid("product is required")))?;
        let price = p.price.ok_or_else(|| status(DomainError::invalid("product.price is required")))?;
        let dimensions = p.dimensions.unwrap_or_default();
        let new = NewProduct {
            sku: p.sku,
            name: p.name,
            description: p.description,
            category: p.category,
            price_minor: price.minor_units,
            currency_code: price.currency_code,
            image_url: p.image_url,
            weight_grams: p.weight_grams,
            dimensions: domain::Dimensions {
                length_mm: dimensions.length_mm,
                width_mm: dimensions.width_mm,
                height_mm: dimensions.height_mm,
            },
            stock: p.stock,
        };
        let created = self.catalog.create(new, now_millis()).await?;
        Ok(Response::new(to_pb(created)))
    }

    async fn check_availability(
        &self,
        request: Request<pb::CheckAvailabilityRequest>,
    ) -> Result<Response<pb::CheckAvailabilityResponse>, Status> {
        let items = items_from_pb(request.into_inner().items);
        let report = self.catalog.store.check_availability(&items).await?;
        let items: Vec<pb::ItemAvailability> = report
            .into_iter()
            .map(|a| pb::ItemAvailability {
                sufficient: a.available.is_some_and(|n| n >= a.requested),
                found: a.available.is_some(),
                available: a.available.unwrap_or(0),
                requested: a.requested,
                product_id: a.product_id,
            })
            .collect();
        Ok(Response::new(pb::CheckAvailabilityResponse { all_available: items.iter().all(|i| i.sufficient), items }))
    }

    async fn reserve_inventory(
        &self,
        request: Request<pb::ReserveInventoryRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let r = request.into_inner();
        let ttl_ms = match r.ttl_seconds {
            0 => self.policy.default_ttl_ms,
            s if s < 0 => return Err(status(DomainError::invalid("ttl_seconds must not be negative"))),
            s => s.saturating_mul(1000).min(self.policy.max_ttl_ms),
        };
        let reservation = self.catalog.reserve(&r.order_id, &items_from_pb(r.items), ttl_ms, now_millis()).await?;
        Ok(Response::new(reservation_to_pb(reservation)))
    }

    async fn release_inventory(
        &self,
        request: Request<pb::ReleaseInventoryRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let order_id = request.into_inner().order_id;
        let reservation = self.catalog.release(&order_id, now_millis()).await?;
        Ok(Response::new(reservation_to_pb(reservation)))
    }

    async fn commit_inventory(
        &self,
        request: Request<pb::CommitInventoryRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let order_id = request.into_inner().order_id;
        let reservation = self.catalog.commit(&order_id, now_millis()).await?;
        Ok(Response::new(reservation_to_pb(reservation)))
    }

    async fn restock_inventory(
        &self,
        request: Request<pb::RestockInventoryRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let order_id = request.into_inner().order_id;
        let reservation = self.catalog.restock(&order_id, now_millis()).await?;
        Ok(Response::new(reservation_to_pb(reservation)))
    }

    async fn get_reservation(
        &self,
        request: Request<pb::GetReservationRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let order_id = request.into_inner().order_id;
        match self.catalog.store.get_reservation(&order_id).await? {
            Some(reservation) => Ok(Response::new(reservation_to_pb(reservation))),
            None => Err(status(DomainError::NotFound(format!("no reservation for order {order_id}")))),
        }
    }
}
