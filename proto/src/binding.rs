//! What a client's munge credential says about its request, so that a credential proves one
//! request and nothing else.
//!
//! A munge credential is a bearer token: whoever holds it is its uid until its TTL ends. The
//! client therefore mints one per request (`munge -u <scheduler uid> -s <payload>`), with a
//! payload that names the method and hashes the request's other fields, and the scheduler
//! refuses a credential whose payload is not the one its request gives. A credential captured
//! on the wire or from a log then works for nothing else (and munged refuses it a second time
//! as a replay); `-u` makes it useless to any service that does not run as the scheduler's uid.
//!
//! The hash is over the request's protobuf encoding with its `credential` field cleared, as
//! prost encodes it: fields in number order, so both sides get the same bytes for the same
//! message. A request type with a `map` field would not encode deterministically; none has one,
//! and [`payload`] is only for the request types below.

use prost::Message;

use crate::v1;

/// The version tag every payload starts with.
pub const TAG: &str = "harvest-v1";

/// A request whose credential is bound to its content.
pub trait Bound: Message + Clone {
    /// The gRPC method's name, as it appears in the payload.
    const METHOD: &'static str;
    /// The request with its credential taken out (what the payload hashes).
    fn without_credential(&self) -> Self;
    /// The credential the request carries.
    fn credential(&self) -> Option<&v1::Credential>;
    /// Puts `credential` in the request.
    fn set_credential(&mut self, credential: v1::Credential);
}

macro_rules! bound {
    ($($ty:ident => $method:literal),* $(,)?) => {$(
        impl Bound for v1::$ty {
            const METHOD: &'static str = $method;
            fn without_credential(&self) -> Self {
                let mut bare = self.clone();
                bare.credential = None;
                bare
            }
            fn credential(&self) -> Option<&v1::Credential> {
                self.credential.as_ref()
            }
            fn set_credential(&mut self, credential: v1::Credential) {
                self.credential = Some(credential);
            }
        }
    )*};
}

bound! {
    AcquireLeaseRequest => "AcquireLease",
    ReleaseLeaseRequest => "ReleaseLease",
    RenewLeaseRequest => "RenewLease",
    GetLeaseRequest => "GetLease",
    ListLeasesRequest => "ListLeases",
    ListNodesRequest => "ListNodes",
    DrainNodeRequest => "DrainNode",
    RevokeLeaseRequest => "RevokeLease",
}

/// The payload a credential for `request` must carry: `harvest-v1 <Method> <sha256 hex>`.
pub fn payload<R: Bound>(request: &R) -> String {
    let bytes = request.without_credential().encode_to_vec();
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let mut hex = String::with_capacity(64);
    for b in digest.as_ref() {
        hex.push_str(&format!("{b:02x}"));
    }
    format!("{TAG} {} {hex}", R::METHOD)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acquire(cores: u32) -> v1::AcquireLeaseRequest {
        v1::AcquireLeaseRequest {
            cores,
            memory_mib: 256,
            ..Default::default()
        }
    }

    #[test]
    fn the_payload_names_the_method_and_ignores_the_credential() {
        let mut a = acquire(2);
        let before = payload(&a);
        assert!(before.starts_with("harvest-v1 AcquireLease "), "{before}");
        assert_eq!(before.len(), "harvest-v1 AcquireLease ".len() + 64);
        a.credential = Some(v1::Credential {
            munge: "MUNGE:abc".into(),
        });
        assert_eq!(payload(&a), before);
    }

    #[test]
    fn any_other_field_or_method_changes_the_payload() {
        assert_ne!(payload(&acquire(2)), payload(&acquire(3)));
        let release = v1::ReleaseLeaseRequest {
            credential: None,
            lease_id: "a".into(),
        };
        let renew = v1::RenewLeaseRequest {
            credential: None,
            lease_id: "a".into(),
        };
        // Same bytes on the wire, different methods: different payloads.
        assert_eq!(
            release.without_credential().encode_to_vec(),
            renew.without_credential().encode_to_vec()
        );
        assert_ne!(payload(&release), payload(&renew));
        let other = v1::ReleaseLeaseRequest {
            credential: None,
            lease_id: "b".into(),
        };
        assert_ne!(payload(&release), payload(&other));
    }
}
