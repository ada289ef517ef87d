//! The helloworld Greeter of tonic-etcd's examples, tests and benchmarks, generated from
//! `proto/helloworld.proto`: `greeter_server::{Greeter, GreeterServer}`,
//! `greeter_client::GreeterClient`, `HelloRequest` and `HelloReply`.
//!
//! A crate of its own, so that the library has no build script: a crate that depends on
//! tonic-etcd compiles no proto of ours. Not published.

#![allow(missing_docs, clippy::all)]

tonic::include_proto!("helloworld");
