//! The front door's table of which app serves which host name. Pure: the server tells it who
//! registered and who left, and asks it where a host's connection goes.
//!
//! Rules:
//! - A host name belongs to one app at a time. Another app asking for it while the first app has
//!   a member registered is refused, naming that app.
//! - The same app may register again while its earlier member is still connected: that is a
//!   daemon upgrade (the new daemon registers, the old one drains what it holds). New
//!   connections go to the newest member; the older one gets none.
//! - When every member of an app has left (its daemon stopped or crashed), its hosts are
//!   remembered as that app's, so connections for them can wait a moment for it to come back
//!   instead of being refused, and another app may now take them.
//! - A registration may name `*.example.com`, which matches one more label (`a.example.com`,
//!   not `example.com` or `a.b.example.com`); an exact name wins over a wildcard.

use std::collections::BTreeMap;

/// One registered connection of an app's daemon, numbered by the server in arrival order.
pub type MemberId = u64;

/// Where a new connection for a host goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// To this member.
    Serve(MemberId),
    /// The app that served this host has no member now (its daemon is restarting or stopped).
    Down {
        /// The app's name.
        app: String,
    },
    /// No app ever registered this host.
    Unknown,
}

/// Why a registration was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Another app's daemon holds a host name.
    #[error(
        "host {host} is served by app {app} (its daemon is registered); choose another host name, \
         or stop that app first"
    )]
    HostTaken {
        /// The host name asked for.
        host: String,
        /// The app holding it.
        app: String,
    },
    /// The registration named no host.
    #[error("a registration must name at least one host (`[host] hosts` in flotilla.toml)")]
    NoHosts,
}

#[derive(Clone, Debug)]
struct Member {
    app: String,
    hosts: Vec<String>,
}

/// The host table. See the module documentation for its rules.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    members: BTreeMap<MemberId, Member>,
    /// The app that last served each host name, kept after its members leave.
    last_app: BTreeMap<String, String>,
}

impl Registry {
    /// Registers member `id` of `app` for `hosts` (normalized names), or says why not. Nothing
    /// changes on a refusal.
    pub fn register(&mut self, id: MemberId, app: &str, hosts: &[String]) -> Result<(), Refusal> {
        self.check(app, hosts)?;
        for host in hosts {
            self.last_app.insert(host.clone(), app.to_owned());
        }
        self.members.insert(
            id,
            Member {
                app: app.to_owned(),
                hosts: hosts.to_vec(),
            },
        );
        Ok(())
    }

    /// Whether [`Registry::register`] would accept `app` for `hosts`, changing nothing.
    pub fn check(&self, app: &str, hosts: &[String]) -> Result<(), Refusal> {
        if hosts.is_empty() {
            return Err(Refusal::NoHosts);
        }
        for host in hosts {
            if let Some(other) = self
                .members
                .values()
                .find(|m| m.app != app && m.hosts.contains(host))
            {
                return Err(Refusal::HostTaken {
                    host: host.clone(),
                    app: other.app.clone(),
                });
            }
        }
        Ok(())
    }

    /// Remembers `host` as `app`'s without a member, so its connections wait for the app (a new
    /// front door taking over from an old one, whose apps register again in a moment).
    pub fn remember(&mut self, host: &str, app: &str) {
        self.last_app.insert(host.to_owned(), app.to_owned());
    }

    /// Every host name an app has registered, with that app (for a front door taking over).
    pub fn known_hosts(&self) -> &BTreeMap<String, String> {
        &self.last_app
    }

    /// Forgets member `id` (its connection closed). Its hosts stay remembered as its app's.
    pub fn unregister(&mut self, id: MemberId) {
        self.members.remove(&id);
    }

    /// The app member `id` belongs to.
    pub fn app_of(&self, id: MemberId) -> Option<&str> {
        self.members.get(&id).map(|m| m.app.as_str())
    }

    /// Where a connection for `host` (normalized) goes.
    pub fn lookup(&self, host: &str) -> Lookup {
        let wildcard = host
            .split_once('.')
            .map(|(_, parent)| format!("*.{parent}"));
        for name in std::iter::once(host.to_owned()).chain(wildcard) {
            // The newest member of the app holding the name: the highest id.
            if let Some((&id, _)) = self
                .members
                .iter()
                .rev()
                .find(|(_, m)| m.hosts.contains(&name))
            {
                return Lookup::Serve(id);
            }
            if let Some(app) = self.last_app.get(&name) {
                return Lookup::Down { app: app.clone() };
            }
        }
        Lookup::Unknown
    }

    /// Every registered member: its id, app and hosts, oldest first (for the front door's status).
    pub fn members(&self) -> impl Iterator<Item = (MemberId, &str, &[String])> {
        self.members
            .iter()
            .map(|(&id, m)| (id, m.app.as_str(), m.hosts.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn each_host_goes_to_its_app() {
        let mut r = Registry::default();
        r.register(1, "shop", &hosts(&["shop.example"]))
            .expect("free");
        r.register(2, "blog", &hosts(&["blog.example", "www.blog.example"]))
            .expect("free");
        assert_eq!(r.lookup("shop.example"), Lookup::Serve(1));
        assert_eq!(r.lookup("www.blog.example"), Lookup::Serve(2));
        assert_eq!(r.lookup("other.example"), Lookup::Unknown);
    }

    #[test]
    fn another_app_cannot_take_a_registered_host_and_nothing_changes() {
        let mut r = Registry::default();
        r.register(1, "shop", &hosts(&["shop.example"]))
            .expect("free");
        let refused = r.register(2, "blog", &hosts(&["blog.example", "shop.example"]));
        assert_eq!(
            refused,
            Err(Refusal::HostTaken {
                host: "shop.example".into(),
                app: "shop".into()
            })
        );
        assert_eq!(r.lookup("blog.example"), Lookup::Unknown);
        assert_eq!(r.app_of(2), None);
    }

    #[test]
    fn an_upgrade_sends_new_connections_to_the_newest_member_until_it_leaves() {
        let mut r = Registry::default();
        r.register(1, "shop", &hosts(&["shop.example"]))
            .expect("free");
        r.register(2, "shop", &hosts(&["shop.example"]))
            .expect("same app");
        assert_eq!(r.lookup("shop.example"), Lookup::Serve(2));
        r.unregister(1);
        assert_eq!(r.lookup("shop.example"), Lookup::Serve(2));
    }

    #[test]
    fn a_host_whose_app_left_is_down_and_may_be_taken_over() {
        let mut r = Registry::default();
        r.register(1, "shop", &hosts(&["shop.example"]))
            .expect("free");
        r.unregister(1);
        assert_eq!(
            r.lookup("shop.example"),
            Lookup::Down { app: "shop".into() }
        );
        r.register(3, "shop", &hosts(&["shop.example"]))
            .expect("back");
        assert_eq!(r.lookup("shop.example"), Lookup::Serve(3));
        r.unregister(3);
        r.register(4, "store", &hosts(&["shop.example"]))
            .expect("free again");
        assert_eq!(r.lookup("shop.example"), Lookup::Serve(4));
    }

    #[test]
    fn a_wildcard_matches_one_label_and_an_exact_name_wins() {
        let mut r = Registry::default();
        r.register(1, "tenants", &hosts(&["*.apps.example"]))
            .expect("free");
        r.register(2, "admin", &hosts(&["admin.apps.example"]))
            .expect("free");
        assert_eq!(r.lookup("a.apps.example"), Lookup::Serve(1));
        assert_eq!(r.lookup("admin.apps.example"), Lookup::Serve(2));
        assert_eq!(r.lookup("apps.example"), Lookup::Unknown);
        assert_eq!(r.lookup("a.b.apps.example"), Lookup::Unknown);
    }

    #[test]
    fn a_registration_without_hosts_is_refused() {
        assert_eq!(
            Registry::default().register(1, "shop", &[]),
            Err(Refusal::NoHosts)
        );
    }
}
