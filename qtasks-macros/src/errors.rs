//! Collecting errors so that one build reports every mistake in an attribute, not only the
//! first (the serde_derive approach).

use proc_macro2::TokenStream;
use quote::ToTokens;

#[derive(Default)]
pub(crate) struct Errors {
    combined: Option<syn::Error>,
}

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.combined {
            Some(combined) => combined.combine(error),
            None => self.combined = Some(error),
        }
    }

    pub(crate) fn spanned(&mut self, tokens: impl ToTokens, message: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.combined.is_none()
    }

    /// The user's item, unchanged, followed by the errors: the item is always kept, so one
    /// mistake does not cascade into "cannot find function" errors elsewhere.
    pub(crate) fn emit_with_item(self, item: TokenStream) -> TokenStream {
        let mut out = item;
        if let Some(error) = self.combined {
            out.extend(error.into_compile_error());
        }
        out
    }
}
