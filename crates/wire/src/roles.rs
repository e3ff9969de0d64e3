//! Group roles (issue 13): the admins of a group, carried in a private-use MLS
//! group-context extension ([`ROLES_EXTENSION`]) that every member and the relay read.
//!
//! The extension's data is the postcard encoding ([`crate::encode`]) of the admins' user
//! names, sorted and without repeats, at least one and at most [`MAX_ADMINS`]. A group
//! whose context has no roles extension (made before roles existed) lets every member do
//! what admins do.

use crate::{BoundedVec, UserName};

/// Private-use MLS extension type of the roles, in the group context.
pub const ROLES_EXTENSION: u16 = 0xf0c2;

/// Most admins a group may have.
pub const MAX_ADMINS: usize = 64;

/// Why a roles extension is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolesError {
    /// It does not decode as a list of user names.
    #[error("the roles do not decode")]
    Undecodable,
    /// It names no admin.
    #[error("the roles name no admin")]
    Empty,
    /// It names more than [`MAX_ADMINS`] admins.
    #[error("the roles name more than {MAX_ADMINS} admins")]
    TooMany,
    /// Its names are not sorted, or one is named twice.
    #[error("the roles are not sorted without repeats")]
    NotCanonical,
}

/// The extension data naming `admins` (sorted and deduplicated here), refused when empty or
/// too many.
pub fn encode_roles(admins: &[UserName]) -> Result<Vec<u8>, RolesError> {
    let mut list = admins.to_vec();
    list.sort();
    list.dedup();
    check(&list)?;
    crate::encode(&BoundedVec(list)).map_err(|_| RolesError::Undecodable)
}

/// The admins an extension's data names, checked: well-formed, sorted without repeats,
/// 1 to [`MAX_ADMINS`] names.
pub fn decode_roles(data: &[u8]) -> Result<Vec<UserName>, RolesError> {
    let BoundedVec(list) =
        crate::decode::<BoundedVec<UserName>>(data).map_err(|_| RolesError::Undecodable)?;
    check(&list)?;
    Ok(list)
}

fn check(list: &[UserName]) -> Result<(), RolesError> {
    if list.is_empty() {
        return Err(RolesError::Empty);
    }
    if list.len() > MAX_ADMINS {
        return Err(RolesError::TooMany);
    }
    if !list.windows(2).all(|w| w.first() < w.get(1)) {
        return Err(RolesError::NotCanonical);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn u(s: &str) -> UserName {
        UserName::new(s).unwrap()
    }

    /// Roles round-trip sorted; empty, oversized, unsorted and garbage data are refused.
    #[test]
    fn roles_round_trip_and_refuse_malformed_data() {
        let data = encode_roles(&[u("bob"), u("alice"), u("bob")]).unwrap();
        assert_eq!(decode_roles(&data).unwrap(), vec![u("alice"), u("bob")]);
        assert_eq!(encode_roles(&[]), Err(RolesError::Empty));
        let many: Vec<UserName> = (0..=MAX_ADMINS).map(|i| u(&format!("u{i}"))).collect();
        assert_eq!(encode_roles(&many), Err(RolesError::TooMany));
        let many = crate::encode(&BoundedVec(many)).unwrap();
        assert_eq!(decode_roles(&many), Err(RolesError::TooMany));
        let unsorted = crate::encode(&BoundedVec(vec![u("bob"), u("alice")])).unwrap();
        assert_eq!(decode_roles(&unsorted), Err(RolesError::NotCanonical));
        let empty = crate::encode(&BoundedVec(Vec::<UserName>::new())).unwrap();
        assert_eq!(decode_roles(&empty), Err(RolesError::Empty));
        assert_eq!(decode_roles(&[0xff, 0xff]), Err(RolesError::Undecodable));
    }
}
