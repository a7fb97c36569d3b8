//! Generated gRPC contracts for every shopfast service, and the encoded
//! FileDescriptorSet they were generated from (with `google.api.http` options),
//! used by server reflection and by the gateway's transcoder.

pub mod time;

/// The encoded `FileDescriptorSet` of every shopfast proto and its imports.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/shopfast_descriptor.bin"));

pub mod google {
    pub mod api {
        tonic::include_proto!("google.api");
    }
}

pub mod common {
    pub mod v1 {
        tonic::include_proto!("shopfast.common.v1");
    }
}

pub mod users {
    pub mod v1 {
        tonic::include_proto!("shopfast.users.v1");
    }
}

pub mod products {
    pub mod v1 {
        tonic::include_proto!("shopfast.products.v1");
    }
}

pub mod orders {
    pub mod v1 {
        tonic::include_proto!("shopfast.orders.v1");
    }
}

pub mod payments {
    pub mod v1 {
        tonic::include_proto!("shopfast.payments.v1");
    }
}

pub mod queue {
    pub mod v1 {
        tonic::include_proto!("shopfast.queue.v1");
    }
}

/// Fully qualified gRPC service names, as registered with health and reflection.
pub mod service_names {
    pub const USERS: &str = "shopfast.users.v1.UserService";
    pub const PRODUCTS: &str = "shopfast.products.v1.ProductService";
    pub const ORDERS: &str = "shopfast.orders.v1.OrderService";
    pub const PAYMENTS: &str = "shopfast.payments.v1.PaymentService";
    pub const QUEUE: &str = "shopfast.queue.v1.QueueService";
}
