//! `#[qtasks::plugin(on = "..")]`: keeps the handler fn as written and registers, through
//! inventory, a shim that picks the trigger's payload out of the event and calls the handler.
//! The trigger is emitted as a `::qtasks::Trigger` variant: the runtime never matches names.

mod parse;

use proc_macro2::{Ident, Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::ItemFn;
use syn::spanned::Spanned;

use crate::errors::Errors;

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let options = parse::parse_options(args, &mut errors);
    let function: ItemFn = match syn::parse2(item.clone()) {
        Ok(function) => function,
        Err(_) => {
            errors.push(syn::Error::new(
                Span::call_site(),
                "`#[qtasks::plugin]` goes on a fn: `#[qtasks::plugin(on = \"..\")] fn handler(event: &..) { .. }`",
            ));
            return errors.emit_with_item(item);
        }
    };
    let Some(options) = options else {
        return errors.emit_with_item(item);
    };
    let param = parse::check_handler(&function, options.trigger, &mut errors);
    match param {
        Some(param) if errors.is_empty() => {
            let registration = emit(&function, &options, &param);
            quote! { #item #registration }
        }
        _ => errors.emit_with_item(item),
    }
}

fn emit(function: &ItemFn, options: &parse::PluginOptions, param: &syn::Type) -> TokenStream {
    let trigger = options.trigger;
    let ident = &function.sig.ident;
    let ident_name = ident.to_string();
    let variant = Ident::new(trigger.variant_str(), Span::call_site());
    // Spanned on the user's parameter type, so a handler that does not fit the trigger is
    // reported there, with the expected signature from the trait's diagnostic.
    // The payload type is named, not inferred from the handler, so a wrong parameter type is
    // reported as "cannot handle this trigger" rather than as a confusing inference error.
    let call = if let Some(task) = &options.task {
        recover_call(function, task)
    } else if function.sig.asyncness.is_some() {
        quote_spanned! {param.span()=>
            ::qtasks::__private::call_async::<::qtasks::__private::triggers::#variant<'_>, _>(#ident, payload)
        }
    } else {
        quote_spanned! {param.span()=>
            ::qtasks::__private::call_sync::<::qtasks::__private::triggers::#variant<'_>, _>(#ident, payload)
        }
    };
    quote! {
        #[doc(hidden)]
        #[allow(unused_qualifications, clippy::all, clippy::pedantic)]
        const _: () = {
            fn __qtasks_plugin_shim<'a>(
                event: ::qtasks::__private::TriggerEvent<'a>,
            ) -> ::qtasks::__private::HandlerCall<'a> {
                match event {
                    ::qtasks::__private::TriggerEvent::#variant(payload) => #call,
                    _ => ::qtasks::__private::HandlerCall::Skip,
                }
            }

            ::qtasks::__private::inventory::submit! {
                ::qtasks::__private::PluginRegistration {
                    trigger: ::qtasks::__private::Trigger::#variant,
                    name: ::core::concat!(::core::module_path!(), "::", #ident_name),
                    module_path: ::core::module_path!(),
                    file: ::core::file!(),
                    line: ::core::line!(),
                    handler: __qtasks_plugin_shim,
                }
            }
        };
    }
}

/// The shim's call of a handler that recovers one task (`task = my_task`): it hears only that
/// task's failures, and returns that task's result type. Spanned on the handler's return type,
/// so a handler returning another type is reported there, naming both types; the task path is
/// checked on its own span, so a path that is no task is reported where it is written.
fn recover_call(function: &ItemFn, task: &syn::Path) -> TokenStream {
    let ident = &function.sig.ident;
    let returns_span = match &function.sig.output {
        syn::ReturnType::Default => ident.span(),
        syn::ReturnType::Type(_, ty) => ty.span(),
    };
    let task_check = quote_spanned! {task.span()=>
        ::qtasks::__private::typed_task::<#task, _>()
    };
    let call = if function.sig.asyncness.is_some() {
        quote_spanned! {returns_span=>
            ::qtasks::__private::recover_async::<#task, _, _, _>(#ident, payload)
        }
    } else {
        quote_spanned! {returns_span=>
            ::qtasks::__private::recover_sync::<#task, _, _, _>(#ident, payload)
        }
    };
    quote! {{
        #task_check;
        #call
    }}
}
