//! placeholder during development
pub mod event;
pub mod fasthash;
pub mod heap;
pub mod stacks;
pub mod demangle;
pub mod maps;
pub mod symbolize;
