//! The daemon's SQLite state: version records, instance readiness, the deploy lock, the routing
//! table and its tombstones, each version's compute spec and the process groups it started.
//!
//! One connection in WAL mode behind a mutex: the daemon is the only writer, and every statement
//! is small, so callers hold the lock for microseconds. Everything the daemon needs to come back
//! after a crash (routing, specs, process ids) is written before the action it describes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use flotilla_core::drain::Readiness;
use flotilla_core::routing::RoutingTable;
use flotilla_core::{DeploymentId, DeploymentName, InstanceId, Timestamp};
use flotilla_engine::ports::{LockInfo, LockOutcome, VersionRecord, VersionSpec};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::error::HostError;

/// How one version's instances are launched, fixed when its compute is created so that a restart
/// of the daemon relaunches exactly what was deployed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    /// The shell command.
    pub command: String,
    /// The release directory the command runs in.
    pub release_dir: PathBuf,
    /// The HTTP path probed for health.
    pub health_path: String,
}

/// A version's compute as recorded: what to run and how many.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeRecord {
    /// The spec the engine asked for.
    pub spec: VersionSpec,
    /// How to launch it.
    pub launch: Launch,
    /// Instances that should run now.
    pub desired: u32,
}

/// A process group started for one instance, recorded so a restarted daemon can adopt it (or
/// stop it when it is not wanted any more).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessRecord {
    /// The version.
    pub id: DeploymentId,
    /// The instance.
    pub instance: InstanceId,
    /// The process id, which is also its process group id.
    pub pid: u32,
    /// Its start time (`/proc/<pid>/stat` field 22) when it was spawned; `None` for a record
    /// written by a daemon older than adoption, which is never adopted.
    pub start_time: Option<u64>,
    /// The loopback port it was told to listen on (`PORT`).
    pub port: u16,
    /// The kernel's boot id when it was spawned: start times count from boot, so a process of
    /// an earlier boot is never taken for one of this boot.
    pub boot_id: Option<String>,
}

/// The state database of one deployment name.
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS readiness (id TEXT NOT NULL, instance TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (id, instance));
CREATE TABLE IF NOT EXISTS lock (k INTEGER PRIMARY KEY CHECK (k = 0), owner TEXT NOT NULL,
    acquired_at INTEGER NOT NULL, expires_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS routing (k INTEGER PRIMARY KEY CHECK (k = 0), tbl TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tombstones (id TEXT PRIMARY KEY, removed_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS compute (id TEXT PRIMARY KEY, rec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS processes (id TEXT NOT NULL, instance TEXT NOT NULL, pid INTEGER NOT NULL,
    PRIMARY KEY (id, instance));
";

/// Columns added to `processes` after its first release, so that a restarted daemon can adopt the
/// processes it finds: each is added to an older database when it opens.
const PROCESS_COLUMNS: &[&str] = &[
    "start_time INTEGER",
    "port INTEGER NOT NULL DEFAULT 0",
    "boot_id TEXT",
];

/// Makes the database file (created empty if missing) readable and writable by its owner only:
/// it holds each version's environment, secrets included. SQLite gives its `-wal` and `-shm`
/// files the database's permissions.
fn owner_only(path: &Path) -> Result<(), HostError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |operation: &'static str| {
        let path = path.to_path_buf();
        move |source| HostError::Io {
            operation,
            path,
            source,
        }
    };
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io("create state database"))?;
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        if file.exists() {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .map_err(io("restrict permissions of"))?;
        }
    }
    Ok(())
}

/// Tombstones kept: enough for any realistic number of old tabs' versions, bounded all the same.
const MAX_TOMBSTONES: i64 = 1000;

impl Store {
    /// Opens (creating if needed) the database at `path` for deployment `name`. Refuses a database
    /// that belongs to another deployment name.
    pub fn open(path: &Path, name: &DeploymentName) -> Result<Store, HostError> {
        let sql = |operation: &str| {
            let operation = operation.to_owned();
            let path = path.to_path_buf();
            move |source| HostError::Sqlite {
                operation,
                path,
                source,
            }
        };
        owner_only(path)?;
        let conn = Connection::open(path).map_err(sql("open"))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(sql("set busy timeout"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql("enable WAL"))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql("set synchronous"))?;
        conn.execute_batch(SCHEMA).map_err(sql("create schema"))?;
        for column in PROCESS_COLUMNS {
            let name = column.split_whitespace().next().unwrap_or(column);
            let present: bool = conn
                .query_row(
                    "SELECT COUNT(*) > 0 FROM pragma_table_info('processes') WHERE name = ?1",
                    [name],
                    |r| r.get(0),
                )
                .map_err(sql("read schema"))?;
            if !present {
                conn.execute_batch(&format!("ALTER TABLE processes ADD COLUMN {column}"))
                    .map_err(sql("upgrade schema"))?;
            }
        }
        let stored: Option<String> = conn
            .query_row("SELECT v FROM meta WHERE k = 'name'", [], |r| r.get(0))
            .optional()
            .map_err(sql("read name"))?;
        match stored {
            Some(stored) if stored != name.as_str() => {
                return Err(HostError::NameMismatch {
                    state_dir: path.parent().unwrap_or(path).to_path_buf(),
                    serving: stored,
                    asked: name.to_string(),
                });
            }
            Some(_) => {}
            None => {
                conn.execute(
                    "INSERT INTO meta (k, v) VALUES ('name', ?1)",
                    [name.as_str()],
                )
                .map_err(sql("record name"))?;
            }
        }
        Ok(Store {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable: SQLite rolled back.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn sql_err(&self, operation: &str) -> impl FnOnce(rusqlite::Error) -> HostError {
        let operation = operation.to_owned();
        let path = self.path.clone();
        move |source| HostError::Sqlite {
            operation,
            path,
            source,
        }
    }

    fn decode<T: for<'de> Deserialize<'de>>(&self, what: &str, text: &str) -> Result<T, HostError> {
        serde_json::from_str(text).map_err(|e| HostError::Corrupt {
            path: self.path.clone(),
            what: what.to_owned(),
            message: e.to_string(),
        })
    }

    fn encode<T: Serialize>(value: &T) -> String {
        serde_json::to_string(value).expect("state values serialise to JSON")
    }

    /// Every version record, oldest first (ids sort by creation time).
    pub fn list_versions(&self) -> Result<Vec<VersionRecord>, HostError> {
        let rows: Vec<(String, String)> = {
            let conn = self.conn();
            let mut stmt = conn
                .prepare_cached("SELECT id, record FROM versions ORDER BY id")
                .map_err(self.sql_err("list versions"))?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(self.sql_err("list versions"))?
                .collect::<Result<_, _>>()
                .map_err(self.sql_err("list versions"))?
        };
        rows.iter()
            .map(|(id, text)| self.decode(&format!("version {id}"), text))
            .collect()
    }

    /// One version record.
    pub fn get_version(&self, id: &DeploymentId) -> Result<Option<VersionRecord>, HostError> {
        let text: Option<String> = self
            .conn()
            .query_row(
                "SELECT record FROM versions WHERE id = ?1",
                [id.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql_err("read version"))?;
        text.map(|t| self.decode(&format!("version {id}"), &t))
            .transpose()
    }

    /// Creates or replaces a version record.
    pub fn put_version(&self, record: &VersionRecord) -> Result<(), HostError> {
        self.conn()
            .execute(
                "INSERT INTO versions (id, record) VALUES (?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET record = excluded.record",
                params![record.version.id.as_str(), Self::encode(record)],
            )
            .map_err(self.sql_err("write version"))?;
        Ok(())
    }

    /// Deletes a version record and its readiness.
    pub fn delete_version(&self, id: &DeploymentId) -> Result<(), HostError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.sql_err("delete version"))?;
        tx.execute("DELETE FROM versions WHERE id = ?1", [id.as_str()])
            .map_err(self.sql_err("delete version"))?;
        tx.execute("DELETE FROM readiness WHERE id = ?1", [id.as_str()])
            .map_err(self.sql_err("delete readiness"))?;
        tx.commit().map_err(self.sql_err("delete version"))?;
        Ok(())
    }

    /// What each instance of each of `ids` last reported.
    pub fn readiness(
        &self,
        ids: &[DeploymentId],
    ) -> Result<BTreeMap<DeploymentId, BTreeMap<InstanceId, Readiness>>, HostError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT instance, value FROM readiness WHERE id = ?1")
            .map_err(self.sql_err("read readiness"))?;
        let mut out = BTreeMap::new();
        for id in ids {
            let rows: Vec<(String, String)> = stmt
                .query_map([id.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(self.sql_err("read readiness"))?
                .collect::<Result<_, _>>()
                .map_err(self.sql_err("read readiness"))?;
            let mut per = BTreeMap::new();
            for (instance, value) in rows {
                let corrupt = |message: String| HostError::Corrupt {
                    path: self.path.clone(),
                    what: format!("readiness of {id}/{instance}"),
                    message,
                };
                let instance = InstanceId::new(&instance).map_err(|e| corrupt(e.to_string()))?;
                let value: Readiness = value
                    .parse()
                    .map_err(|e: flotilla_core::drain::UnknownReadiness| corrupt(e.to_string()))?;
                per.insert(instance, value);
            }
            if !per.is_empty() {
                out.insert(id.clone(), per);
            }
        }
        Ok(out)
    }

    /// Replaces the readiness of `id`'s instances with `values` (instances not listed are forgotten).
    /// Writes only when something changed.
    pub fn set_readiness(
        &self,
        id: &DeploymentId,
        values: &BTreeMap<InstanceId, Readiness>,
    ) -> Result<bool, HostError> {
        let current = self
            .readiness(std::slice::from_ref(id))?
            .remove(id)
            .unwrap_or_default();
        if &current == values {
            return Ok(false);
        }
        let mut conn = self.conn();
        let tx = conn
            .transaction()
            .map_err(self.sql_err("write readiness"))?;
        tx.execute("DELETE FROM readiness WHERE id = ?1", [id.as_str()])
            .map_err(self.sql_err("write readiness"))?;
        for (instance, value) in values {
            tx.execute(
                "INSERT INTO readiness (id, instance, value) VALUES (?1, ?2, ?3)",
                params![id.as_str(), instance.as_str(), value.as_str()],
            )
            .map_err(self.sql_err("write readiness"))?;
        }
        tx.commit().map_err(self.sql_err("write readiness"))?;
        Ok(true)
    }

    /// Takes the deploy lock (see `StateStore::acquire_lock`).
    pub fn acquire_lock(
        &self,
        owner: &str,
        now: Timestamp,
        ttl: Duration,
        force: bool,
    ) -> Result<LockOutcome, HostError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.sql_err("take lock"))?;
        let held = read_lock(&tx).map_err(self.sql_err("read lock"))?;
        if let Some(info) = held
            && info.owner != owner
            && info.expires_at > now
            && !force
        {
            return Ok(LockOutcome::Held(info));
        }
        let expires = now.plus(ttl);
        tx.execute(
            "INSERT INTO lock (k, owner, acquired_at, expires_at) VALUES (0, ?1, ?2, ?3)
             ON CONFLICT (k) DO UPDATE SET owner = excluded.owner,
                 acquired_at = excluded.acquired_at, expires_at = excluded.expires_at",
            params![owner, millis(now), millis(expires)],
        )
        .map_err(self.sql_err("take lock"))?;
        tx.commit().map_err(self.sql_err("take lock"))?;
        Ok(LockOutcome::Acquired)
    }

    /// Releases the lock if `owner` holds it.
    pub fn release_lock(&self, owner: &str) -> Result<(), HostError> {
        self.conn()
            .execute("DELETE FROM lock WHERE owner = ?1", [owner])
            .map_err(self.sql_err("release lock"))?;
        Ok(())
    }

    /// Who holds the lock, expired or not.
    pub fn lock_info(&self) -> Result<Option<LockInfo>, HostError> {
        read_lock(&self.conn()).map_err(self.sql_err("read lock"))
    }

    /// The routing table as last saved (empty if never saved).
    pub fn load_routing(&self) -> Result<RoutingTable, HostError> {
        let text: Option<String> = self
            .conn()
            .query_row("SELECT tbl FROM routing WHERE k = 0", [], |r| r.get(0))
            .optional()
            .map_err(self.sql_err("read routing"))?;
        match text {
            Some(t) => self.decode("routing table", &t),
            None => Ok(RoutingTable::new()),
        }
    }

    /// Saves the routing table.
    pub fn save_routing(&self, table: &RoutingTable) -> Result<(), HostError> {
        self.conn()
            .execute(
                "INSERT INTO routing (k, tbl) VALUES (0, ?1)
                 ON CONFLICT (k) DO UPDATE SET tbl = excluded.tbl",
                [Self::encode(table)],
            )
            .map_err(self.sql_err("write routing"))?;
        Ok(())
    }

    /// Remembers that `id`'s affinity was removed, so requests naming it keep getting 410.
    pub fn add_tombstone(&self, id: &DeploymentId, now: Timestamp) -> Result<(), HostError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO tombstones (id, removed_at) VALUES (?1, ?2) ON CONFLICT (id) DO NOTHING",
            params![id.as_str(), millis(now)],
        )
        .map_err(self.sql_err("write tombstone"))?;
        conn.execute(
            "DELETE FROM tombstones WHERE id NOT IN
                 (SELECT id FROM tombstones ORDER BY removed_at DESC, id DESC LIMIT ?1)",
            [MAX_TOMBSTONES],
        )
        .map_err(self.sql_err("prune tombstones"))?;
        Ok(())
    }

    /// Forgets `id`'s tombstone (its affinity is being installed again).
    pub fn remove_tombstone(&self, id: &DeploymentId) -> Result<(), HostError> {
        self.conn()
            .execute("DELETE FROM tombstones WHERE id = ?1", [id.as_str()])
            .map_err(self.sql_err("delete tombstone"))?;
        Ok(())
    }

    /// Every tombstoned id.
    pub fn tombstones(&self) -> Result<Vec<DeploymentId>, HostError> {
        let ids: Vec<String> = {
            let conn = self.conn();
            let mut stmt = conn
                .prepare_cached("SELECT id FROM tombstones ORDER BY id")
                .map_err(self.sql_err("read tombstones"))?;
            stmt.query_map([], |r| r.get(0))
                .map_err(self.sql_err("read tombstones"))?
                .collect::<Result<_, _>>()
                .map_err(self.sql_err("read tombstones"))?
        };
        ids.iter()
            .map(|id| {
                DeploymentId::new(id).map_err(|e| HostError::Corrupt {
                    path: self.path.clone(),
                    what: "tombstone".to_owned(),
                    message: e.to_string(),
                })
            })
            .collect()
    }

    /// Records (or replaces) a version's compute.
    pub fn put_compute(&self, record: &ComputeRecord) -> Result<(), HostError> {
        self.conn()
            .execute(
                "INSERT INTO compute (id, rec) VALUES (?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET rec = excluded.rec",
                params![record.spec.id.as_str(), Self::encode(record)],
            )
            .map_err(self.sql_err("write compute"))?;
        Ok(())
    }

    /// Every recorded compute, oldest version first.
    pub fn list_compute(&self) -> Result<Vec<ComputeRecord>, HostError> {
        let rows: Vec<(String, String)> = {
            let conn = self.conn();
            let mut stmt = conn
                .prepare_cached("SELECT id, rec FROM compute ORDER BY id")
                .map_err(self.sql_err("list compute"))?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(self.sql_err("list compute"))?
                .collect::<Result<_, _>>()
                .map_err(self.sql_err("list compute"))?
        };
        rows.iter()
            .map(|(id, text)| self.decode(&format!("compute of {id}"), text))
            .collect()
    }

    /// Forgets a version's compute.
    pub fn delete_compute(&self, id: &DeploymentId) -> Result<(), HostError> {
        self.conn()
            .execute("DELETE FROM compute WHERE id = ?1", [id.as_str()])
            .map_err(self.sql_err("delete compute"))?;
        Ok(())
    }

    /// Records the process group an instance runs in.
    pub fn put_process(&self, process: &ProcessRecord) -> Result<(), HostError> {
        self.conn()
            .execute(
                "INSERT INTO processes (id, instance, pid, start_time, port, boot_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (id, instance) DO UPDATE SET pid = excluded.pid,
                     start_time = excluded.start_time, port = excluded.port,
                     boot_id = excluded.boot_id",
                params![
                    process.id.as_str(),
                    process.instance.as_str(),
                    process.pid,
                    process.start_time.map(|t| t as i64),
                    process.port,
                    process.boot_id
                ],
            )
            .map_err(self.sql_err("write process"))?;
        Ok(())
    }

    /// Forgets an instance's process group `pid` (it has exited). A newer process of the same
    /// instance is left recorded.
    pub fn delete_process(
        &self,
        id: &DeploymentId,
        instance: &InstanceId,
        pid: u32,
    ) -> Result<(), HostError> {
        self.conn()
            .execute(
                "DELETE FROM processes WHERE id = ?1 AND instance = ?2 AND pid = ?3",
                params![id.as_str(), instance.as_str(), pid],
            )
            .map_err(self.sql_err("delete process"))?;
        Ok(())
    }

    /// Every recorded process group.
    pub fn list_processes(&self) -> Result<Vec<ProcessRecord>, HostError> {
        type Row = (String, String, u32, Option<i64>, u16, Option<String>);
        let rows: Vec<Row> = {
            let conn = self.conn();
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, instance, pid, start_time, port, boot_id FROM processes
                     ORDER BY id, instance",
                )
                .map_err(self.sql_err("list processes"))?;
            stmt.query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .map_err(self.sql_err("list processes"))?
            .collect::<Result<_, _>>()
            .map_err(self.sql_err("list processes"))?
        };
        rows.into_iter()
            .map(|(id, instance, pid, start_time, port, boot_id)| {
                let corrupt = |message: String| HostError::Corrupt {
                    path: self.path.clone(),
                    what: format!("process {id}/{instance}"),
                    message,
                };
                Ok(ProcessRecord {
                    id: DeploymentId::new(&id).map_err(|e| corrupt(e.to_string()))?,
                    instance: InstanceId::new(&instance).map_err(|e| corrupt(e.to_string()))?,
                    pid,
                    start_time: start_time.map(|t| t as u64),
                    port,
                    boot_id,
                })
            })
            .collect()
    }
}

fn millis(t: Timestamp) -> i64 {
    i64::try_from(t.as_millis()).unwrap_or(i64::MAX)
}

fn read_lock(conn: &Connection) -> rusqlite::Result<Option<LockInfo>> {
    conn.query_row(
        "SELECT owner, acquired_at, expires_at FROM lock WHERE k = 0",
        [],
        |r| {
            let owner: String = r.get(0)?;
            let acquired: i64 = r.get(1)?;
            let expires: i64 = r.get(2)?;
            Ok(LockInfo {
                owner,
                acquired_at: Timestamp::from_millis(u64::try_from(acquired).unwrap_or(0)),
                expires_at: Timestamp::from_millis(u64::try_from(expires).unwrap_or(0)),
            })
        },
    )
    .optional()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_core::Version;
    use flotilla_engine::ports::ImageRef;

    fn name() -> DeploymentName {
        DeploymentName::new("web").expect("valid")
    }

    fn id(n: u64) -> DeploymentId {
        DeploymentId::generate(Timestamp::from_secs(1_764_000_000 + n), n)
    }

    fn open(dir: &tempfile::TempDir) -> Store {
        Store::open(&dir.path().join("state.db"), &name()).expect("open")
    }

    #[test]
    fn records_survive_reopening_and_sort_oldest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        for n in [3, 1, 2] {
            store
                .put_version(&VersionRecord {
                    version: Version::new(id(n), Timestamp::from_secs(n)),
                    image: Some(ImageRef(format!("/r/{n}"))),
                    instances: 2,
                    ready_passes: 0,
                    canary: None,
                })
                .expect("put");
        }
        drop(store);
        let store = open(&dir);
        let ids: Vec<_> = store
            .list_versions()
            .expect("list")
            .into_iter()
            .map(|r| r.version.id)
            .collect();
        assert_eq!(ids, vec![id(1), id(2), id(3)]);
        store.delete_version(&id(2)).expect("delete");
        store.delete_version(&id(2)).expect("delete is idempotent");
        assert_eq!(store.get_version(&id(2)).expect("get"), None);
        assert!(store.get_version(&id(3)).expect("get").is_some());
    }

    #[test]
    fn the_database_and_its_journal_are_readable_by_the_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("state.db");
        // An older state file, world-readable: tightened when opened.
        std::fs::write(&db, b"").expect("write");
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let store = open(&dir);
        store
            .put_version(&VersionRecord {
                version: Version::new(id(1), Timestamp::from_secs(1)),
                image: None,
                instances: 1,
                ready_passes: 0,
                canary: None,
            })
            .expect("put");
        for suffix in ["", "-wal", "-shm"] {
            let file = dir.path().join(format!("state.db{suffix}"));
            let mode = std::fs::metadata(&file)
                .expect("exists")
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{}", file.display());
        }
    }

    #[test]
    fn refuses_another_deployment_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(open(&dir));
        let other = DeploymentName::new("api").expect("valid");
        let err = Store::open(&dir.path().join("state.db"), &other)
            .err()
            .expect("refused");
        assert!(
            err.to_string()
                .contains("serves deployment `web`, not `api`"),
            "{err}"
        );
    }

    #[test]
    fn lock_is_exclusive_until_it_expires_or_is_broken() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let t = Timestamp::from_secs;
        let ttl = Duration::from_secs(60);
        assert_eq!(
            store.acquire_lock("a", t(100), ttl, false).expect("lock"),
            LockOutcome::Acquired
        );
        assert!(
            matches!(store.acquire_lock("b", t(120), ttl, false).expect("lock"), LockOutcome::Held(i) if i.owner == "a")
        );
        assert_eq!(
            store.acquire_lock("a", t(130), ttl, false).expect("renew"),
            LockOutcome::Acquired
        );
        assert_eq!(
            store.lock_info().expect("info").map(|i| i.expires_at),
            Some(t(190))
        );
        assert_eq!(
            store
                .acquire_lock("b", t(191), ttl, false)
                .expect("expired"),
            LockOutcome::Acquired
        );
        assert_eq!(
            store.acquire_lock("a", t(192), ttl, true).expect("forced"),
            LockOutcome::Acquired
        );
        store.release_lock("b").expect("not the holder: no-op");
        assert_eq!(
            store.lock_info().expect("info").map(|i| i.owner),
            Some("a".to_owned())
        );
        store.release_lock("a").expect("release");
        assert_eq!(store.lock_info().expect("info"), None);
    }

    #[test]
    fn readiness_is_replaced_per_version_and_written_only_on_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let i = |s: &str| InstanceId::new(s).expect("valid");
        let mut values = BTreeMap::new();
        values.insert(i("i1"), Readiness::Healthy);
        values.insert(i("i2"), Readiness::ShutdownReady);
        assert!(store.set_readiness(&id(1), &values).expect("write"));
        assert!(!store.set_readiness(&id(1), &values).expect("unchanged"));
        let got = store.readiness(&[id(1), id(2)]).expect("read");
        assert_eq!(got.len(), 1);
        assert_eq!(got[&id(1)], values);
        store.delete_version(&id(1)).expect("delete");
        assert!(store.readiness(&[id(1)]).expect("read").is_empty());
    }

    #[test]
    fn routing_tombstones_and_processes_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let mut table = RoutingTable::new();
        table.install_affinity(id(1));
        store.save_routing(&table).expect("save");
        assert_eq!(store.load_routing().expect("load"), table);
        store
            .add_tombstone(&id(5), Timestamp::from_secs(1))
            .expect("tomb");
        store
            .add_tombstone(&id(5), Timestamp::from_secs(2))
            .expect("idempotent");
        assert_eq!(store.tombstones().expect("list"), vec![id(5)]);
        store.remove_tombstone(&id(5)).expect("remove");
        assert!(store.tombstones().expect("list").is_empty());
        let i1 = InstanceId::new("i1").expect("valid");
        let process = |pid| ProcessRecord {
            id: id(1),
            instance: i1.clone(),
            pid,
            start_time: Some(u64::from(pid) * 1000),
            port: 40000 + pid as u16,
            boot_id: Some("b00t".to_owned()),
        };
        store.put_process(&process(42)).expect("put");
        store.put_process(&process(43)).expect("replace");
        assert_eq!(store.list_processes().expect("list"), vec![process(43)]);
        store
            .delete_process(&id(1), &i1, 42)
            .expect("an older pid: no-op");
        assert_eq!(store.list_processes().expect("list").len(), 1);
        store.delete_process(&id(1), &i1, 43).expect("delete");
        assert!(store.list_processes().expect("list").is_empty());
    }

    #[test]
    fn a_database_from_before_adoption_opens_and_its_processes_are_not_adoptable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.db");
        {
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch(
                "CREATE TABLE processes (id TEXT NOT NULL, instance TEXT NOT NULL,
                     pid INTEGER NOT NULL, PRIMARY KEY (id, instance));",
            )
            .expect("old schema");
            conn.execute(
                "INSERT INTO processes (id, instance, pid) VALUES (?1, 'i1', 42)",
                [id(1).as_str()],
            )
            .expect("old row");
        }
        let name = DeploymentName::new("web").expect("valid");
        let store = Store::open(&path, &name).expect("opens and upgrades");
        let listed = store.list_processes().expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].pid, listed[0].start_time, listed[0].port),
            (42, None, 0)
        );
        drop(store);
        Store::open(&path, &name).expect("opens again: the upgrade runs once");
    }
}
