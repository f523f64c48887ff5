//! `#[qtasks::task]`: keeps the fn as written and adds a typed handle of the same name (a struct
//! in the type namespace) holding the task's definition (registered through inventory), a shim
//! that decodes arguments and calls the fn, and a typed `add_task`.

mod parse;

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::ItemFn;
use syn::spanned::Spanned;

use crate::errors::Errors;
use parse::Task;

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let options = parse::parse_options(args, &mut errors);
    let function: ItemFn = match syn::parse2(item.clone()) {
        Ok(function) => function,
        Err(_) => {
            errors.push(syn::Error::new(
                proc_macro2::Span::call_site(),
                "`#[qtasks::task]` goes on a fn: `#[qtasks::task] async fn my_task(..) { .. }`",
            ));
            return errors.emit_with_item(item);
        }
    };
    let task = parse::parse_fn(options, function, &mut errors);
    if !errors.is_empty() {
        return errors.emit_with_item(item);
    }
    let generated = emit(&task);
    // Task parameters are decoded into owned values, so clippy's pedantic advice to borrow
    // them cannot be followed; silence it on the fn (nothing else about the item changes).
    let function = &task.function;
    quote! {
        #[allow(clippy::needless_pass_by_value)]
        #function
        #generated
    }
}

fn emit(task: &Task) -> TokenStream {
    let cron = task.options.cron.as_ref().map(|expression| {
        let ident = &task.function.sig.ident;
        quote! {
            #[doc(hidden)]
            const _: () = {
                ::qtasks::__private::inventory::submit! {
                    ::qtasks::__private::CronRegistration {
                        task: #ident::NAME,
                        expression: #expression,
                    }
                }
            };
        }
    });
    let function = &task.function;
    let ident = &function.sig.ident;
    let vis = &function.vis;
    let name = task.name();
    let echo = task.options.echo;
    let blocking = function.sig.asyncness.is_none();
    let priority = match &task.options.priority {
        Some(priority) => quote! { ::core::option::Option::Some(#priority) },
        None => quote! { ::core::option::Option::None },
    };
    let tags = &task.options.tags;
    let retry = match &task.options.retry {
        Some(retry) => quote! { ::core::option::Option::Some(#retry) },
        None => quote! { ::core::option::Option::None },
    };
    // A `static` implementing `TaskRunner`, referenced from the task's static definition.
    let executor = match &task.options.executor {
        Some(executor) => quote_spanned! {executor.span()=>
            ::core::option::Option::Some(&#executor as &'static dyn ::qtasks::__private::TaskRunner)
        },
        None => quote! { ::core::option::Option::None },
    };
    let description = match &task.options.description {
        Some(description) => quote! { ::core::option::Option::Some(#description) },
        None => quote! { ::core::option::Option::None },
    };

    // Parameters filled from the arguments (the extractors are filled by the executor).
    let arg_params: Vec<_> = task.params.iter().filter(|p| !p.extractor).collect();
    let param_names: Vec<String> = arg_params.iter().map(|p| p.name.to_string()).collect();
    let param_idents: Vec<_> = arg_params.iter().map(|p| &p.name).collect();
    let param_types: Vec<_> = arg_params.iter().map(|p| &p.ty).collect();
    let param_type_names: Vec<String> = param_types.iter().map(|ty| type_name(ty)).collect();
    let param_count = arg_params.len();
    // Each argument encoded, spanned on its parameter's type.
    let encode_all: Vec<TokenStream> = arg_params
        .iter()
        .map(|param| {
            let (ty, ident, name) = (&param.ty, &param.name, param.name.to_string());
            quote_spanned! {ty.span()=> Self::__qtasks_encode(#name, &#ident) }
        })
        .collect();
    let but_last = param_count.saturating_sub(1);
    let param_idents_but_last = &param_idents[..but_last];
    let param_types_but_last = &param_types[..but_last];
    let encode_but_last = &encode_all[..but_last];
    let decoded: Vec<_> = (0..task.params.len())
        .map(|i| format_ident!("__qtasks_arg{i}"))
        .collect();
    let mut next_index = 0_usize;
    let fill: Vec<TokenStream> = task
        .params
        .iter()
        .zip(&decoded)
        .map(|(param, var)| {
            let ty = &param.ty;
            if param.extractor {
                quote_spanned! {ty.span()=> let #var: #ty = ::qtasks::__private::extract::<#ty>(&ctx).await?; }
            } else {
                let index = next_index;
                next_index += 1;
                let name = param.name.to_string();
                // Spanned on the type: a type that is no serde type is reported there.
                let handle = syn::Ident::new(&ident.to_string(), ty.span());
                quote_spanned! {ty.span()=> let #var: #ty = #handle::__qtasks_take(&mut args, #index, #name)?; }
            }
        })
        .collect();
    let has_extractors = task.params.iter().any(|p| p.extractor);

    let options = &task.options;
    let retry_on = if options.retry_on_exc.is_empty() {
        quote! { ::core::option::Option::None }
    } else {
        let types = &options.retry_on_exc;
        quote! {
            ::core::option::Option::Some({
                fn __qtasks_retry_on(error: &::qtasks::__private::TaskError) -> bool {
                    false #(|| ::qtasks::__private::error_is::<#types>(error))*
                }
                __qtasks_retry_on
            })
        }
    };
    let optional_seconds = |value: &Option<syn::Expr>| match value {
        Some(value) => quote! { ::core::option::Option::Some((#value) as f64) },
        None => quote! { ::core::option::Option::None },
    };
    let backoff_max = optional_seconds(&options.retry_backoff_max);
    let result_ttl = optional_seconds(&options.result_ttl);
    let unique_for = optional_seconds(&options.unique_for);
    let rate_limit = match options.rate_limit {
        Some((count, per)) => quote! { ::core::option::Option::Some((#count, #per)) },
        None => quote! { ::core::option::Option::None },
    };
    let max_running = match &options.max_running {
        // A `u32`, so a `const` of another type (a negative one) does not compile.
        Some(max) => quote! { ::core::option::Option::Some::<u32>(#max) },
        None => quote! { ::core::option::Option::None },
    };
    let jitter = optional_seconds(&options.retry_jitter);
    let exponential = options.retry_exponential;
    let retry_backoff = match &options.retry_delay {
        _ if options.retry_delay.is_none()
            && !exponential
            && options.retry_backoff_max.is_none()
            && options.retry_jitter.is_none() =>
        {
            quote! { ::core::option::Option::None }
        }
        // An exponential backoff without a first wait starts at one second; a fixed one
        // (jitter alone) waits none.
        delay => {
            let default = if exponential {
                quote! { 1.0 }
            } else {
                quote! { 0.0 }
            };
            let delay = delay
                .as_ref()
                .map_or(default, |delay| quote! { (#delay) as f64 });
            quote! {
                ::core::option::Option::Some(::qtasks::__private::RetryBackoffParts {
                    delay: #delay,
                    exponential: #exponential,
                    max: #backoff_max,
                    jitter: #jitter,
                })
            }
        }
    };
    let max_time = match &options.max_time {
        Some(seconds) => quote! { ::core::option::Option::Some((#seconds) as f64) },
        None => quote! { ::core::option::Option::None },
    };
    let decode = match &options.decode {
        Some(decode) => quote_spanned! {decode.span()=>
            ::core::option::Option::Some({
                fn __qtasks_decode(
                    value: ::qtasks::__private::JsonValue,
                ) -> ::core::result::Result<::qtasks::__private::JsonValue, ::std::string::String> {
                    ::qtasks::__private::run_decode(#decode, value)
                }
                __qtasks_decode
            })
        },
        None => quote! { ::core::option::Option::None },
    };
    let generate_handler = match &options.generate_handler {
        Some(handler) => quote_spanned! {handler.span()=> ::core::option::Option::Some(#handler) },
        None => quote! { ::core::option::Option::None },
    };
    // Each entry spanned on itself, so a static that is no middleware is reported there.
    let middleware_list = |list: &[syn::Expr]| -> Vec<TokenStream> {
        list.iter()
            .map(|m| quote_spanned! {m.span()=> &#m as &'static dyn ::qtasks::__private::Middleware })
            .collect()
    };
    let middlewares_before = middleware_list(&options.middlewares_before);
    let middlewares_after = middleware_list(&options.middlewares_after);
    let queue = match &options.queue {
        Some(queue) => quote! { ::core::option::Option::Some(#queue) },
        None => quote! { ::core::option::Option::None },
    };
    let router = match &options.router {
        Some(router) => quote! { ::core::option::Option::Some(#router) },
        None => quote! { ::core::option::Option::None },
    };

    // The context goes first when `echo = true`. Passing it through `echo_context` turns a
    // first parameter of another type into one readable error, spanned on that type.
    let context_arg = match &task.context {
        Some(ty) => quote_spanned! {ty.span()=> ::qtasks::__private::echo_context::<#ty>(ctx), },
        None => quote! {},
    };
    let context_unused = if task.context.is_none() && !has_extractors {
        quote! { ::core::mem::drop(ctx); }
    } else {
        quote! {}
    };
    let call = if blocking {
        quote! { ::qtasks::__private::run_blocking(move || #ident(#context_arg #(#decoded),*)).await? }
    } else {
        quote! { #ident(#context_arg #(#decoded),*).await }
    };

    // Each parameter and the result must be serde types: checked here, spanned on the type
    // the user wrote, so the error points at it (rustc then suggests the derive).
    let parameter_checks = arg_params.iter().map(|param| {
        let ty = &param.ty;
        quote_spanned! {ty.span()=>
            task_parameters_must_be_serde_types::<#ty>();
        }
    });
    // (A plain return type may be a concrete stream, which is no serde type: its conversion,
    // spanned on the return type below, reports it when it is neither.)
    let output_check = match output_of(&function.sig.output) {
        Output::Stream(ty) => quote_spanned! {ty.span()=>
            task_results_must_be_serialize::<#ty>();
        },
        Output::Value(ty) if is_result(&function.sig.output) => quote_spanned! {ty.span()=>
            task_results_must_be_serialize::<#ty>();
        },
        Output::Value(_) => quote! {},
    };
    let serde_checks = quote! {
        #[doc(hidden)]
        const _: () = {
            fn task_parameters_must_be_serde_types<
                T: ::qtasks::__private::SerdeSerialize + ::qtasks::__private::SerdeDeserializeOwned,
            >() {}
            fn task_results_must_be_serialize<T: ::qtasks::__private::SerdeSerialize>() {}
            #[allow(dead_code)]
            fn check() {
                #(#parameter_checks)*
                #output_check
            }
        };
    };

    // The handle knows what the task gives back, read off the signature: `T`, the `T` of a
    // `Result<T, E>` (any type named `...Result`), or the items of an `impl Stream`.
    let output_span = match &function.sig.output {
        syn::ReturnType::Default => function.sig.ident.span(),
        syn::ReturnType::Type(_, ty) => ty.span(),
    };
    // Spanned on the return type: a result that is no serde type is reported there.
    let convert = quote_spanned! {output_span=>
        let kind = (&&&::qtasks::__private::ReturnProbe(&returned)).__qtasks_return_kind();
        kind.convert(returned)
    };
    let (handle_type, enqueue) = match output_of(&function.sig.output) {
        Output::Value(ty) => (
            quote! { ::qtasks::__private::TaskHandle<#ty> },
            format_ident!("enqueue"),
        ),
        Output::Stream(item) => (
            quote! { ::qtasks::__private::StreamHandle<#item> },
            format_ident!("enqueue_stream"),
        ),
    };

    // The result type a plugin's replacement value is checked against (at compile time for a
    // handler with `task = ..`, at run time for the others): a stream task's is its items.
    let result_type: syn::Type = match output_of(&function.sig.output) {
        Output::Value(ty) => ty,
        Output::Stream(item) => syn::parse_quote!(::std::vec::Vec<#item>),
    };
    let result_type_name = match output_of(&function.sig.output) {
        Output::Value(ty) => type_name(&ty),
        Output::Stream(item) => format!("Vec<{}>", type_name(&item)),
    };

    // A type that borrows (`&'static str`) is never decoded by a caller, and the autoref
    // probe cannot tell (lifetimes are not known when the method is picked): it is not checked.
    let check_output = if borrows(&result_type) {
        quote! {
            let _ = value;
            ::core::result::Result::Ok(())
        }
    } else {
        quote! {
            #[allow(unused_imports)]
            use ::qtasks::__private::{DecodableOutput as _, OpaqueOutput as _};
            (&&::qtasks::__private::OutputProbe::<#result_type>::new()).__qtasks_check_output(value)
        }
    };

    let handle_doc = format!(
        "The `{name}` task's typed handle: [`add_task`]({ident}::add_task) enqueues it with \
         argument types checked at compile time. Generated by `#[qtasks::task]`; the fn itself \
         is unchanged and still callable."
    );
    let add_many_doc = format!(
        "Adds the `{name}` task once per item of `calls` (a tuple of its arguments each), \
         the adds sent together (see `QueueTasks::add_many`); the argument types are checked at \
         compile time."
    );
    let add_task_doc = format!(
        "Adds the `{name}` task to the app's queue; the argument types are checked at compile time."
    );

    // The handle is a braced struct named like the fn: it lives in the type namespace only, so
    // `my_task(..)` still calls the fn and `my_task::add_task(..)` reaches the handle. Being
    // an item next to the fn (not a module), it resolves the fn's parameter types in the
    // user's scope, also inside a fn body.
    quote! {
        #serde_checks

        #[doc = #handle_doc]
        #[allow(non_camel_case_types, dead_code, unreachable_pub)]
        #vis struct #ident {
            _private: (),
        }

        #[allow(dead_code, unreachable_pub, unused_qualifications, clippy::all, clippy::pedantic)]
        impl #ident {
            /// The name the task is registered under.
            pub const NAME: &'static str = #name;

            // The serde bounds of parameters live here, in the user's crate, so an error names
            // these (and the parameter), not the runtime's internals.
            #[doc(hidden)]
            fn __qtasks_encode<T: ::qtasks::__private::SerdeSerialize>(
                param: &str,
                value: &T,
            ) -> ::qtasks::__private::Result<::qtasks::__private::JsonValue> {
                ::qtasks::__private::encode_arg(Self::NAME, param, value)
            }

            #[doc(hidden)]
            fn __qtasks_take<T: ::qtasks::__private::SerdeDeserializeOwned>(
                args: &mut ::qtasks::__private::TaskArgs,
                index: usize,
                name: &str,
            ) -> ::core::result::Result<T, ::qtasks::__private::TaskError> {
                args.take(index, name)
            }

            /// The task's definition, as registered.
            pub const DEFINITION: &'static ::qtasks::__private::TaskDefinition = {
                fn __qtasks_invoke(
                    ctx: ::qtasks::__private::TaskContext,
                    mut args: ::qtasks::__private::TaskArgs,
                ) -> ::qtasks::__private::TaskFuture {
                    #context_unused
                    ::std::boxed::Box::pin(async move {
                        #(#fill)*
                        args.finish(#param_count)?;
                        let returned = #call;
                        use ::qtasks::__private::{ResultReturnKind as _, ResultStreamReturnKind as _, StreamReturnKind as _, ValueReturnKind as _};
                        #convert
                    })
                }

                fn __qtasks_check_output(
                    value: &::qtasks::__private::JsonValue,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    #check_output
                }

                static DEFINITION: ::qtasks::__private::TaskDefinition = ::qtasks::__private::define_task(::qtasks::__private::TaskDefinitionParts {
                    name: #name,
                    priority: #priority,
                    echo: #echo,
                    tags: &[#(#tags),*],
                    description: #description,
                    params: &[#(::qtasks::__private::TaskParam { name: #param_names, type_name: #param_type_names }),*],
                    blocking: #blocking,
                    retry: #retry,
                    retry_on: #retry_on,
                    retry_backoff: #retry_backoff,
                    max_time: #max_time,
                    result_ttl: #result_ttl,
                    unique_for: #unique_for,
                    rate_limit: #rate_limit,
                    max_running: #max_running,
                    decode: #decode,
                    generate_handler: #generate_handler,
                    middlewares_before: &[#(#middlewares_before),*],
                    middlewares_after: &[#(#middlewares_after),*],
                    router: #router,
                    queue: #queue,
                    runner: #executor,
                    module_path: ::core::module_path!(),
                    file: ::core::file!(),
                    line: ::core::line!(),
                    invoke: __qtasks_invoke,
                    output: ::core::option::Option::Some(::qtasks::__private::OutputType {
                        name: #result_type_name,
                        check: __qtasks_check_output,
                    }),
                });
                &DEFINITION
            };

            /// A call of the task with these arguments, built but not sent (see
            /// `qtasks::TaskCall`).
            pub fn call(#(#param_idents: #param_types),*) -> ::qtasks::__private::TaskCall<#handle_type> {
                let args = (|| -> ::qtasks::__private::Result<::std::vec::Vec<::qtasks::__private::JsonValue>> {
                    ::core::result::Result::Ok(::std::vec![
                        #(#encode_all?),*
                    ])
                })();
                ::qtasks::__private::call(Self::DEFINITION, args)
            }

            /// Like `call`, for a call whose last argument a chain fills with the previous
            /// task's result.
            pub fn call_with(#(#param_idents_but_last: #param_types_but_last),*) -> ::qtasks::__private::TaskCall<#handle_type> {
                let args = (|| -> ::qtasks::__private::Result<::std::vec::Vec<::qtasks::__private::JsonValue>> {
                    ::core::result::Result::Ok(::std::vec![
                        #(#encode_but_last?),*
                    ])
                })();
                ::qtasks::__private::call(Self::DEFINITION, args)
            }

            #[doc = #add_many_doc]
            pub async fn add_many(
                app: &::qtasks::__private::QueueTasks,
                calls: impl ::core::iter::IntoIterator<Item = (#(#param_types,)*)>,
            ) -> ::qtasks::__private::Result<::std::vec::Vec<#handle_type>> {
                let calls = calls
                    .into_iter()
                    .map(|(#(#param_idents,)*)| Self::call(#(#param_idents),*));
                ::qtasks::__private::enqueue_many(app, calls).await
            }

            #[doc = #add_task_doc]
            pub async fn add_task(
                app: &::qtasks::__private::QueueTasks,
                #(#param_idents: #param_types),*
            ) -> ::qtasks::__private::Result<#handle_type> {
                let args = ::std::vec![
                    #(#encode_all?),*
                ];
                ::qtasks::__private::#enqueue(app, Self::DEFINITION, args).await
            }
        }

        #[doc(hidden)]
        #[allow(unused_qualifications)]
        impl ::qtasks::__private::TypedTask<#result_type> for #ident {
            const DEFINITION: &'static ::qtasks::__private::TaskDefinition = #ident::DEFINITION;
        }

        #[doc(hidden)]
        const _: () = {
            ::qtasks::__private::inventory::submit! {
                ::qtasks::__private::TaskRegistration(#ident::DEFINITION)
            }
        };

        #cron
    }
}

/// What a task gives back, as its handle reads it.
enum Output {
    /// A value of this type.
    Value(syn::Type),
    /// A stream of items of this type.
    Stream(syn::Type),
}

/// The output of a task fn's signature: `()` with no return type; `T` of `Result<T, E>`,
/// `TaskResult<T>` or any type whose name ends in `Result` (the error is stored, not
/// returned); the `Item` of `impl Stream<Item = I>` (also inside a `Result`); else the type
/// itself.
fn output_of(output: &syn::ReturnType) -> Output {
    let ty = match output {
        syn::ReturnType::Default => return Output::Value(syn::parse_quote!(())),
        syn::ReturnType::Type(_, ty) => &**ty,
    };
    let inner = ok_type(ty).unwrap_or(ty);
    match stream_item(inner) {
        Some(item) => Output::Stream(item.clone()),
        None => Output::Value(inner.clone()),
    }
}

/// Whether the return type is a `...Result<T, ..>`.
fn is_result(output: &syn::ReturnType) -> bool {
    matches!(output, syn::ReturnType::Type(_, ty) if ok_type(ty).is_some())
}

/// `T` when `ty` is `...Result<T, ..>`.
fn ok_type(ty: &syn::Type) -> Option<&syn::Type> {
    let syn::Type::Path(path) = ty else {
        return None;
    };
    let last = path.path.segments.last()?;
    if !last.ident.to_string().ends_with("Result") {
        return None;
    }
    let syn::PathArguments::AngleBracketed(arguments) = &last.arguments else {
        return None;
    };
    arguments.args.iter().find_map(|argument| match argument {
        syn::GenericArgument::Type(ty) => Some(ty),
        _ => None,
    })
}

/// `I` when `ty` is `impl Stream<Item = I> + ..`.
fn stream_item(ty: &syn::Type) -> Option<&syn::Type> {
    let syn::Type::ImplTrait(bounds) = ty else {
        return None;
    };
    bounds.bounds.iter().find_map(|bound| {
        let syn::TypeParamBound::Trait(bound) = bound else {
            return None;
        };
        let last = bound.path.segments.last()?;
        if last.ident != "Stream" {
            return None;
        }
        let syn::PathArguments::AngleBracketed(arguments) = &last.arguments else {
            return None;
        };
        arguments.args.iter().find_map(|argument| match argument {
            syn::GenericArgument::AssocType(assoc) if assoc.ident == "Item" => Some(&assoc.ty),
            _ => None,
        })
    })
}

/// A type as the user would write it: `Vec<i32>`, not `Vec < i32 >`.
fn type_name(ty: &syn::Type) -> String {
    quote!(#ty)
        .to_string()
        .replace(" :: ", "::")
        .replace(" < ", "<")
        .replace("< ", "<")
        .replace(" <", "<")
        .replace(" >", ">")
        .replace(" ,", ",")
        .replace("& ", "&")
}

/// Whether a type holds a reference or names a lifetime anywhere (`&'static str`,
/// `Cow<'static, str>`).
fn borrows(ty: &syn::Type) -> bool {
    fn walk(tokens: TokenStream) -> bool {
        tokens.into_iter().any(|token| match token {
            proc_macro2::TokenTree::Punct(punct) => {
                punct.as_char() == '&' || punct.as_char() == '\''
            }
            proc_macro2::TokenTree::Group(group) => walk(group.stream()),
            _ => false,
        })
    }
    walk(quote!(#ty))
}
