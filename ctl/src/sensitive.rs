//! Everything `mcplexerctl` does with a secret value, in one place: reading
//! it (stdin or a no-echo prompt, never argv) and sending it to the vault.
//!
//! Rules: a value lives in a [`Zeroizing`] buffer from the moment it is read;
//! growing the stdin buffer copies into a new zeroizing buffer so no stale
//! copy is left behind; the request that carries it is wrapped in
//! [`Wiping`], which zeroizes the value when tonic drops the message right
//! after encoding it, and also if the call fails before that. The value is
//! never formatted, logged or put in an error. (What the HTTP/2 stack does
//! with the encoded frame is beyond reach of this process.)

use std::io::{self, IsTerminal, Read};

use mcplexer_proto::MAX_MESSAGE_SIZE;
use mcplexer_proto::v1::{
    RotateIdentityRequest, RotateIdentityResponse, SealIdentityRequest, SealIdentityResponse,
    SetProviderSecretRequest, SetSecretRequest, SetSecretResponse, UnlockRequest, UnlockResponse,
};
use prost::bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{GrpcMethod, Status};
use zeroize::{Zeroize, Zeroizing};

use crate::error::Failure;

/// The largest secret accepted (well under the vault's message limit).
pub const MAX_SECRET_LEN: usize = 1024 * 1024;

/// Reads a secret value for `what` (e.g. `github/API_KEY`): all of stdin when
/// stdin is not a terminal (one trailing newline removed), else a no-echo
/// prompt on the terminal, asked twice. An empty value is a usage error.
pub fn read_secret(what: &str) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let stdin = io::stdin();
    let value = if stdin.is_terminal() {
        prompt_twice(what)?
    } else {
        let value = read_piped(&mut stdin.lock())?;
        if value.is_empty() {
            return Err(Failure::usage(format!(
                "the value for {what} read from stdin is empty; nothing was stored"
            )));
        }
        value
    };
    Ok(value)
}

/// Reads a passphrase: all of stdin when it is not a terminal (one trailing
/// newline removed), else a no-echo prompt `prompt`, asked twice when
/// `confirm` (a new passphrase). An empty passphrase is a usage error.
pub fn read_passphrase(prompt: &str, confirm: bool) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let stdin = io::stdin();
    let value = if stdin.is_terminal() {
        let prompt_err = |e: io::Error| {
            Failure::Local(
                anyhow::Error::new(e).context("cannot read the passphrase from the terminal"),
            )
        };
        let first =
            Zeroizing::new(rpassword::prompt_password(format!("{prompt}: ")).map_err(prompt_err)?);
        if confirm && !first.is_empty() {
            let second = Zeroizing::new(rpassword::prompt_password("Again: ").map_err(prompt_err)?);
            if *first != *second {
                return Err(Failure::usage(
                    "the two passphrases differ; nothing was changed",
                ));
            }
        }
        into_bytes(first)
    } else {
        read_piped(&mut stdin.lock())?
    };
    if value.is_empty() {
        return Err(Failure::usage(
            "the passphrase is empty; nothing was changed",
        ));
    }
    Ok(value)
}

/// Refuses a secret given on the command line, without echoing it: it is
/// zeroized here (the copy in the process arguments is out of reach).
pub fn refuse_misplaced(misplaced: &mut Vec<String>) -> Result<(), Failure> {
    if misplaced.is_empty() {
        return Ok(());
    }
    misplaced.iter_mut().for_each(Zeroize::zeroize);
    misplaced.clear();
    Err(Failure::usage(
        "a secret value is never taken from the command line (it would be visible in \
         the process list and your shell history); pipe it on stdin or answer the \
         no-echo prompt, and consider removing it from your shell history",
    ))
}

/// Reads all of `input` into a zeroizing buffer, then removes one trailing
/// `\n` or `\r\n`. Everything else, including other whitespace, is kept.
pub fn read_piped(input: &mut impl Read) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let mut value = Zeroizing::new(Vec::with_capacity(256));
    let mut chunk = Zeroizing::new([0u8; 4096]);
    loop {
        let n = match input.read(&mut chunk[..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Failure::Local(
                    anyhow::Error::new(e).context("cannot read the value from stdin"),
                ));
            }
        };
        let needed = value.len() + n;
        if needed > MAX_SECRET_LEN + 2 {
            return Err(Failure::usage(format!(
                "the value on stdin is larger than {MAX_SECRET_LEN} bytes"
            )));
        }
        if needed > value.capacity() {
            // Grow by hand: a Vec reallocating itself would leave the old
            // bytes in freed memory; the old buffer here is zeroized on drop.
            let mut bigger = Zeroizing::new(Vec::with_capacity(needed.max(2 * value.capacity())));
            bigger.extend_from_slice(&value);
            value = bigger;
        }
        value.extend_from_slice(&chunk[..n]);
    }
    strip_line_end(&mut value);
    Ok(value)
}

/// Removes one trailing `\n` or `\r\n` (the bytes stay in the buffer's
/// spare capacity, which [`Zeroizing`] wipes too).
pub fn strip_line_end(value: &mut Vec<u8>) {
    if value.ends_with(b"\r\n") {
        value.truncate(value.len() - 2);
    } else if value.ends_with(b"\n") {
        value.truncate(value.len() - 1);
    }
}

/// Asks for the value twice on the terminal without echo and compares.
fn prompt_twice(what: &str) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let prompt_err = |e: io::Error| {
        Failure::Local(anyhow::Error::new(e).context("cannot read the value from the terminal"))
    };
    let first = Zeroizing::new(
        rpassword::prompt_password(format!("Value for {what}: ")).map_err(prompt_err)?,
    );
    if first.is_empty() {
        return Err(Failure::usage(format!(
            "the value for {what} is empty; nothing was stored"
        )));
    }
    let second = Zeroizing::new(rpassword::prompt_password("Again: ").map_err(prompt_err)?);
    if *first != *second {
        return Err(Failure::usage(format!(
            "the two values for {what} differ; nothing was stored"
        )));
    }
    Ok(into_bytes(first))
}

/// Moves a zeroizing string's buffer into a zeroizing byte vector without
/// copying it.
fn into_bytes(mut s: Zeroizing<String>) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(std::mem::take(&mut *s).into_bytes())
}

/// A request message that carries a secret value.
pub trait Wipe {
    /// Zeroizes the secret value in place.
    fn wipe(&mut self);
}

impl Wipe for SetSecretRequest {
    fn wipe(&mut self) {
        self.value.zeroize();
    }
}

impl Wipe for SetProviderSecretRequest {
    fn wipe(&mut self) {
        self.client_secret.zeroize();
    }
}

impl Wipe for UnlockRequest {
    fn wipe(&mut self) {
        self.passphrase.zeroize();
    }
}

impl Wipe for SealIdentityRequest {
    fn wipe(&mut self) {
        self.passphrase.zeroize();
    }
}

impl Wipe for RotateIdentityRequest {
    fn wipe(&mut self) {
        self.passphrase.zeroize();
    }
}

/// A request whose secret is zeroized when it is dropped. It encodes exactly
/// as the message it wraps. Deliberately not `Debug`.
pub struct Wiping<M: Wipe>(M);

impl<M: Wipe> Drop for Wiping<M> {
    fn drop(&mut self) {
        self.0.wipe();
    }
}

impl<M: prost::Message + Wipe> prost::Message for Wiping<M> {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.0.encode_raw(buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        self.0.merge_field(tag, wire_type, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.encoded_len()
    }

    fn clear(&mut self) {
        self.0.wipe();
        self.0.clear();
    }
}

/// Stores a scope's secret value (`Admin/SetSecret`). `value` is moved
/// into the request without a copy and zeroized after sending.
pub async fn set_secret(
    channel: Channel,
    scope_id: String,
    key: String,
    mut value: Zeroizing<Vec<u8>>,
) -> Result<SetSecretResponse, Status> {
    let request = Wiping(SetSecretRequest {
        scope_id,
        key,
        value: std::mem::take(&mut *value),
    });
    unary(
        channel,
        "SetSecret",
        "/mcplexer.v1.Admin/SetSecret",
        request,
    )
    .await
}

/// Stores a provider's OAuth client secret (`Admin/SetProviderSecret`).
pub async fn set_provider_secret(
    channel: Channel,
    provider_id: String,
    mut secret: Zeroizing<Vec<u8>>,
) -> Result<SetSecretResponse, Status> {
    let request = Wiping(SetProviderSecretRequest {
        provider_id,
        client_secret: std::mem::take(&mut *secret),
    });
    let path = "/mcplexer.v1.Admin/SetProviderSecret";
    unary(channel, "SetProviderSecret", path, request).await
}

/// Unlocks a sealed vault (`Admin/Unlock`).
pub async fn unlock(
    channel: Channel,
    mut passphrase: Zeroizing<Vec<u8>>,
) -> Result<UnlockResponse, Status> {
    let request = Wiping(UnlockRequest {
        passphrase: std::mem::take(&mut *passphrase),
    });
    unary(channel, "Unlock", "/mcplexer.v1.Admin/Unlock", request).await
}

/// Seals the vault's identity file (`Admin/SealIdentity`).
pub async fn seal_identity(
    channel: Channel,
    mut passphrase: Zeroizing<Vec<u8>>,
) -> Result<SealIdentityResponse, Status> {
    let request = Wiping(SealIdentityRequest {
        passphrase: std::mem::take(&mut *passphrase),
    });
    let path = "/mcplexer.v1.Admin/SealIdentity";
    unary(channel, "SealIdentity", path, request).await
}

/// Rotates the identity (`Admin/RotateIdentity`); `passphrase` seals the
/// new one when the identity is sealed (empty otherwise).
pub async fn rotate_identity(
    channel: Channel,
    mut passphrase: Zeroizing<Vec<u8>>,
) -> Result<RotateIdentityResponse, Status> {
    let request = Wiping(RotateIdentityRequest {
        passphrase: std::mem::take(&mut *passphrase),
    });
    let path = "/mcplexer.v1.Admin/RotateIdentity";
    unary(channel, "RotateIdentity", path, request).await
}

/// One unary Admin call with a wiping request, as the generated client
/// would make it.
async fn unary<M, R>(
    channel: Channel,
    method: &'static str,
    path: &'static str,
    request: Wiping<M>,
) -> Result<R, Status>
where
    M: prost::Message + Wipe + 'static,
    R: prost::Message + Default + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("the vault connection is not ready: {e}")))?;
    let mut request = tonic::Request::new(request);
    request
        .extensions_mut()
        .insert(GrpcMethod::new("mcplexer.v1.Admin", method));
    let codec = tonic_prost::ProstCodec::<Wiping<M>, R>::default();
    let response = grpc
        .unary(request, PathAndQuery::from_static(path), codec)
        .await?;
    Ok(response.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn piped(input: &[u8]) -> Vec<u8> {
        read_piped(&mut &input[..]).unwrap().to_vec()
    }

    #[test]
    fn stdin_loses_exactly_one_line_end() {
        assert_eq!(piped(b"s3cret\n"), b"s3cret");
        assert_eq!(piped(b"s3cret\r\n"), b"s3cret");
        assert_eq!(piped(b"s3cret\n\n"), b"s3cret\n");
        assert_eq!(piped(b"s3cret"), b"s3cret");
        assert_eq!(piped(b" s3 cret \t"), b" s3 cret \t");
        assert_eq!(piped(b"a\rb\r"), b"a\rb\r");
        assert_eq!(piped(b"\n"), b"");
        assert_eq!(piped(b""), b"");
    }

    #[test]
    fn stdin_may_be_large_and_binary() {
        let big: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(piped(&big), big);
    }

    #[test]
    fn stdin_too_large_is_a_usage_error() {
        let huge = vec![b'x'; MAX_SECRET_LEN + 3];
        let err = read_piped(&mut &huge[..]).unwrap_err();
        assert_eq!(err.exit(), crate::error::Exit::Usage);
    }

    #[test]
    fn misplaced_secret_is_refused_without_echo() {
        let mut none = Vec::new();
        assert!(refuse_misplaced(&mut none).is_ok());
        let mut given = vec!["hunter2".to_owned()];
        let err = refuse_misplaced(&mut given).unwrap_err();
        assert!(given.is_empty());
        assert_eq!(err.exit(), crate::error::Exit::Usage);
        assert!(!err.render(true).contains("hunter2"));
    }

    #[test]
    fn strip() {
        let mut v = b"x\r\n".to_vec();
        strip_line_end(&mut v);
        assert_eq!(v, b"x");
    }

    #[test]
    fn wiping_encodes_like_the_message_and_wipes() {
        let inner = SetSecretRequest {
            scope_id: "s".into(),
            key: "K".into(),
            value: b"v4lue".to_vec(),
        };
        let expected = inner.encode_to_vec();
        let mut wrapped = Wiping(inner);
        assert_eq!(wrapped.encode_to_vec(), expected);
        wrapped.0.wipe();
        assert!(wrapped.0.value.is_empty());
        let mut p = SetProviderSecretRequest {
            provider_id: "p".into(),
            client_secret: b"c".to_vec(),
        };
        p.wipe();
        assert!(p.client_secret.is_empty());
    }

    #[test]
    fn string_moves_into_bytes() {
        let s = Zeroizing::new("abc".to_owned());
        assert_eq!(&*into_bytes(s), b"abc");
    }
}
