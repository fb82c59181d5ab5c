//! Who may do what: operators, per-user and per-group caps, and what each caller sees.
//!
//! Pure policy over an [`Identity`] and the usage the book counts; the service asks it under
//! the book's lock, so a check and the placement it allows are one step (two acquisitions of
//! one user cannot both pass a cap that only one fits).
//!
//! ```toml
//! [access]
//! operator_uids = [0]          # may drain nodes, revoke any lease, see every lease
//! operator_gids = []           # members by primary group
//!
//! [access.per_user]            # every user's live leases together
//! max_leases = 100
//! max_cores = 512              # absent: no cap
//! max_memory_mib = 1048576
//!
//! [[access.per_group]]         # a primary group's live leases together (like Slurm's Grp*)
//! gid = 1000
//! max_cores = 64
//! ```

use serde::{Deserialize, Serialize};

use crate::identity::Identity;

/// Live leases one user may hold when the configuration says nothing.
pub const DEFAULT_MAX_LEASES_PER_USER: u64 = 100;

/// Caps on live (pending or active) leases; a key left out is no cap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Caps {
    /// The most live leases. Unset: no cap.
    pub max_leases: Option<u64>,
    /// The most cores of live leases together. Unset: no cap.
    pub max_cores: Option<u64>,
    /// The most MiB of memory of live leases together. Unset: no cap.
    pub max_memory_mib: Option<u64>,
}

/// Caps on one primary group's leases together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupCaps {
    /// The primary group (gid) whose users' live leases count together (like Slurm's GrpTRES).
    pub gid: u32,
    /// The most live leases of the group. Unset: no cap.
    pub max_leases: Option<u64>,
    /// The most cores of the group's live leases together. Unset: no cap.
    pub max_cores: Option<u64>,
    /// The most MiB of memory of the group's live leases together. Unset: no cap.
    pub max_memory_mib: Option<u64>,
}

impl GroupCaps {
    fn caps(&self) -> Caps {
        Caps {
            max_leases: self.max_leases,
            max_cores: self.max_cores,
            max_memory_mib: self.max_memory_mib,
        }
    }
}

/// The `[access]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Operators by uid (root always is one).
    pub operator_uids: Vec<u32>,
    /// Operators by primary gid.
    pub operator_gids: Vec<u32>,
    /// Caps on each user's live (pending or active) leases together (`[access.per_user]`).
    pub per_user: Caps,
    /// Caps per primary group (`[[access.per_group]]`, one table per group).
    pub per_group: Vec<GroupCaps>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self {
            operator_uids: Vec::new(),
            operator_gids: Vec::new(),
            per_user: Caps {
                max_leases: Some(DEFAULT_MAX_LEASES_PER_USER),
                max_cores: None,
                max_memory_mib: None,
            },
            per_group: Vec::new(),
        }
    }
}

/// What a set of live leases holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub leases: u64,
    pub cores: u64,
    pub memory_mib: u64,
}

impl Usage {
    pub fn add(&mut self, cores: u64, memory_mib: u64) {
        self.leases += 1;
        self.cores += cores;
        self.memory_mib += memory_mib;
    }
}

/// A request the access rules refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error(
        "{whose} would hold {would} {what} with this lease, over the limit of {limit} \
         ([access.{key}] {field} in the scheduler's configuration); release a lease \
         (`harvest leases` lists yours) or ask the operators for a higher limit"
    )]
    OverCap {
        whose: String,
        what: &'static str,
        would: u64,
        limit: u64,
        key: String,
        field: &'static str,
    },
    #[error(
        "{action} is for operators; uid {uid} is not one (operator_uids/operator_gids in [access])"
    )]
    NotOperator { action: &'static str, uid: u32 },
}

impl AccessConfig {
    /// Whether `who` is an operator.
    pub fn is_operator(&self, who: &Identity) -> bool {
        who.is_root()
            || self.operator_uids.contains(&who.uid)
            || self.operator_gids.contains(&who.gid)
    }

    /// Refuses `action` unless `who` is an operator.
    pub fn require_operator(
        &self,
        who: &Identity,
        action: &'static str,
    ) -> Result<(), AccessError> {
        if self.is_operator(who) {
            Ok(())
        } else {
            Err(AccessError::NotOperator {
                action,
                uid: who.uid,
            })
        }
    }

    /// Whether `who` may add a lease of `cores` and `memory_mib` to what they (`user`) and their
    /// primary group (`group`) hold now.
    pub fn check_acquire(
        &self,
        who: &Identity,
        user: Usage,
        group: Usage,
        cores: u64,
        memory_mib: u64,
    ) -> Result<(), AccessError> {
        let whose = if who.name.is_empty() {
            format!("uid {}", who.uid)
        } else {
            format!("user {} (uid {})", who.name, who.uid)
        };
        check(&self.per_user, user, cores, memory_mib, &whose, "per_user")?;
        if let Some(g) = self.per_group.iter().find(|g| g.gid == who.gid) {
            check(
                &g.caps(),
                group,
                cores,
                memory_mib,
                &format!("group {}", who.gid),
                "per_group",
            )?;
        }
        Ok(())
    }
}

fn check(
    caps: &Caps,
    now: Usage,
    cores: u64,
    memory_mib: u64,
    whose: &str,
    key: &str,
) -> Result<(), AccessError> {
    let checks = [
        ("live leases", "max_leases", caps.max_leases, now.leases + 1),
        ("cores", "max_cores", caps.max_cores, now.cores + cores),
        (
            "MiB of memory",
            "max_memory_mib",
            caps.max_memory_mib,
            now.memory_mib + memory_mib,
        ),
    ];
    for (what, field, limit, would) in checks {
        if let Some(limit) = limit
            && would > limit
        {
            return Err(AccessError::OverCap {
                whose: whose.to_owned(),
                what,
                would,
                limit,
                key: key.to_owned(),
                field,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(uid: u32, gid: u32) -> Identity {
        Identity {
            uid,
            gid,
            name: format!("u{uid}"),
        }
    }

    #[test]
    fn root_and_configured_operators_are_operators_and_no_one_else() {
        let a = AccessConfig {
            operator_uids: vec![1500],
            operator_gids: vec![50],
            ..Default::default()
        };
        assert!(a.is_operator(&user(0, 0)));
        assert!(a.is_operator(&user(1500, 1500)));
        assert!(a.is_operator(&user(1600, 50)));
        assert!(!a.is_operator(&user(1601, 1601)));
        let e = a
            .require_operator(&user(1601, 1601), "revoking a lease")
            .unwrap_err();
        assert!(e.to_string().contains("uid 1601"), "{e}");
    }

    #[test]
    fn caps_refuse_what_goes_over_and_name_the_key() {
        let a: AccessConfig = toml::from_str(
            "[per_user]\nmax_leases = 2\nmax_cores = 4\n[[per_group]]\ngid = 7\nmax_memory_mib = 1000\n",
        )
        .unwrap();
        let u = user(1000, 7);
        let mut now = Usage::default();
        a.check_acquire(&u, now, now, 2, 400).unwrap();
        now.add(2, 400);
        let e = a.check_acquire(&u, now, now, 3, 100).unwrap_err();
        assert!(
            matches!(
                &e,
                AccessError::OverCap {
                    field: "max_cores",
                    would: 5,
                    limit: 4,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("[access.per_user] max_cores"), "{e}");
        let e = a.check_acquire(&u, now, now, 1, 700).unwrap_err();
        assert!(
            e.to_string().contains("[access.per_group] max_memory_mib"),
            "{e}"
        );
        now.add(1, 100);
        let e = a.check_acquire(&u, now, now, 1, 1).unwrap_err();
        assert!(
            matches!(
                e,
                AccessError::OverCap {
                    field: "max_leases",
                    ..
                }
            ),
            "{e}"
        );
        // Another group has no group cap.
        a.check_acquire(&user(1001, 8), Usage::default(), now, 1, 900)
            .unwrap();
    }

    #[test]
    fn the_default_caps_the_number_of_leases_only() {
        let a = AccessConfig::default();
        let mut now = Usage::default();
        for _ in 0..DEFAULT_MAX_LEASES_PER_USER {
            now.add(1000, 1 << 30);
        }
        let e = a
            .check_acquire(&user(1000, 1000), now, now, 1, 1)
            .unwrap_err();
        assert!(
            matches!(
                e,
                AccessError::OverCap {
                    field: "max_leases",
                    ..
                }
            ),
            "{e}"
        );
        let unknown = toml::from_str::<AccessConfig>("[per_user]\nmax_lease = 3\n");
        assert!(unknown.unwrap_err().to_string().contains("max_lease"));
    }
}
