//! The attributes of qtasks: `#[qtasks::task]` and `#[qtasks::plugin]`.
//!
//! Use them through the `qtasks` crate, which re-exports them and provides everything the
//! generated code names (under `::qtasks::__private`). This crate only parses, validates and
//! emits; it holds no runtime logic. Set `QTASKS_MACROS_DEBUG=1` while building to print what
//! each attribute expands to.
#![warn(missing_docs)]

mod errors;
mod plugin;
mod task;

use proc_macro::TokenStream;

/// Registers a fn as a task. See the `qtasks` crate docs for the full description.
///
/// Options: `name = "..."`, `echo = true`, `priority = N`, `tags = ["..."]`,
/// `description = "..."`.
#[proc_macro_attribute]
pub fn task(args: TokenStream, item: TokenStream) -> TokenStream {
    debug("task", task::expand(args.into(), item.into())).into()
}

/// Registers a fn as the handler of a plugin trigger. See the `qtasks` crate docs.
///
/// `#[qtasks::plugin(on = "task_executor_run_task_trigger_error")]`
#[proc_macro_attribute]
pub fn plugin(args: TokenStream, item: TokenStream) -> TokenStream {
    debug("plugin", plugin::expand(args.into(), item.into())).into()
}

fn debug(attribute: &str, expansion: proc_macro2::TokenStream) -> proc_macro2::TokenStream {
    if std::env::var_os("QTASKS_MACROS_DEBUG").is_some() {
        eprintln!("#[qtasks::{attribute}] expands to:\n{expansion}\n");
    }
    expansion
}
