//! What domain code may use, and all it may use besides std and serde-free
//! helpers: the error kinds rules speak in, wall-clock milliseconds and
//! calendar months, AIP-158 pagination, and the build version. It depends on
//! no transport and no database, so a domain module that compiles against it
//! alone is pure by construction (`scripts/check-deps.py` holds every domain
//! module to that).
pub mod build;
pub mod error;
pub mod pagination;
pub mod reason;
pub mod red;
pub mod time;
