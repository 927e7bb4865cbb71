//! Query agent benchmark: `index_advice_quality`. A generated workload of
//! 20 query shapes over 3 tables (users, orders, events; primary keys
//! only), each shape with the index that serves it best written down (or
//! none), runs once to fill pg_stat_statements; then the query agent's
//! index advice over it (`query::agent::advise`, what
//! `query.recommend_indexes` answers) is timed. The same workload run
//! (same calls, same parameters, same order) is then timed with no extra
//! index, with the ideal set and with the agent's recommendations built:
//! the figure is the share of the ideal set's saving that the agent's
//! indexes achieve, against the ideal set's 1.0.

use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use chrono::{DateTime, Utc};
use query::agent::QueryAgentConfig;
use serde_json::{Value, json};
use sqlx::postgres::{PgArguments, PgPoolOptions};
use sqlx::{Connection, PgConnection, Postgres};

use crate::read_models::SplitMix;
use crate::{Args, ScratchDb, median, print, round};

const USERS: u64 = 200_000;
const ORDERS: u64 = 400_000;
const EVENTS: u64 = 400_000;
/// Users with events: the first 20,000, about 20 events each (one of each kind).
const EVENT_ACCOUNTS: u64 = 20_000;
/// Sessions of the events: about 4 events each.
const SESSIONS: u64 = 100_000;
const COUNTRIES: u64 = 50;
/// Coupon codes of the 1% of orders that have one: about 20 orders each.
const COUPONS: u64 = 200;
const EVENT_KINDS: u64 = 20;
/// In the data: 90% active, 8% suspended, 2% deleted.
const USER_STATUSES: [&str; 3] = ["active", "suspended", "deleted"];
/// In the data: 5% pending, 60% paid, 30% shipped, 5% cancelled.
const ORDER_STATUSES: [&str; 4] = ["pending", "paid", "shipped", "cancelled"];
const DAY_S: i64 = 86_400;
/// Users sign up, and orders are placed, over the 730 days from
/// 2024-01-01 00:00 UTC (Unix s); an order ships within 5 days.
const ORDERS_START_S: i64 = 1_704_067_200;
const ORDERS_DAYS: i64 = 730;
/// Events happen over the 90 days from 2025-10-01 00:00 UTC (Unix s).
const EVENTS_START_S: i64 = 1_759_276_800;
const EVENTS_DAYS: i64 = 90;
const TABLES: [&str; 3] = ["users", "orders", "events"];

/// The three tables with generated rows (deterministic: `setseed`),
/// primary keys only.
fn load_sql() -> String {
    format!(
        "SELECT setseed(0.42);
CREATE TABLE users (
    id bigint PRIMARY KEY,
    email text NOT NULL,
    name text NOT NULL,
    country text NOT NULL,
    status text NOT NULL,
    created_at timestamptz NOT NULL
);
INSERT INTO users (id, email, name, country, status, created_at)
SELECT i, 'user' || i || '@example.com', 'User ' || i,
       'C' || lpad(floor(random() * {COUNTRIES})::int::text, 2, '0'),
       CASE WHEN r < 0.90 THEN 'active' WHEN r < 0.98 THEN 'suspended' ELSE 'deleted' END,
       to_timestamp({ORDERS_START_S}) + random() * interval '{ORDERS_DAYS} days'
FROM (SELECT i, random() AS r FROM generate_series(1, {USERS}) AS i) AS s;
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    user_id bigint NOT NULL,
    status text NOT NULL,
    total_cents bigint NOT NULL,
    coupon_code text,
    created_at timestamptz NOT NULL,
    shipped_at timestamptz
);
INSERT INTO orders (id, user_id, status, total_cents, coupon_code, created_at, shipped_at)
SELECT i, 1 + floor(random() * {USERS})::bigint,
       CASE WHEN r < 0.05 THEN 'pending' WHEN r < 0.65 THEN 'paid'
            WHEN r < 0.95 THEN 'shipped' ELSE 'cancelled' END,
       floor(random() * 50000)::bigint,
       CASE WHEN random() < 0.01 THEN 'CPN' || floor(random() * {COUPONS})::int END,
       created_at,
       CASE WHEN r >= 0.65 AND r < 0.95 THEN created_at + random() * interval '5 days' END
FROM (SELECT i, random() AS r,
             to_timestamp({ORDERS_START_S}) + random() * interval '{ORDERS_DAYS} days' AS created_at
      FROM generate_series(1, {ORDERS}) AS i) AS s;
CREATE TABLE events (
    id bigint PRIMARY KEY,
    account_id bigint NOT NULL,
    kind text NOT NULL,
    session_id bigint NOT NULL,
    props text NOT NULL,
    created_at timestamptz NOT NULL
);
INSERT INTO events (id, account_id, kind, session_id, props, created_at)
SELECT i, 1 + floor(random() * {EVENT_ACCOUNTS})::bigint, 'kind_' || floor(random() * {EVENT_KINDS})::int,
       1 + floor(random() * {SESSIONS})::bigint, md5(i::text),
       to_timestamp({EVENTS_START_S}) + random() * interval '{EVENTS_DAYS} days'
FROM generate_series(1, {EVENTS}) AS i;"
    )
}

/// Statistics, hint bits and the visibility map settled before anything
/// is measured, so that autovacuum does not start in the middle.
const VACUUM_ANALYZE: &str = "VACUUM (ANALYZE) users, orders, events";
const CREATE_PG_STAT_STATEMENTS: &str = "CREATE EXTENSION IF NOT EXISTS pg_stat_statements";
/// Forgets this database's statements so far (the load's), not the other
/// databases' of the cluster.
const RESET_STATEMENTS: &str = "SELECT pg_stat_statements_reset(0, \
    (SELECT oid FROM pg_database WHERE datname = current_database()), 0)";
/// The indexes of the three tables but their primary keys.
const EXTRA_INDEXES: &str = "SELECT format('%I.%I', n.nspname, c.relname) \
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
    WHERE i.indrelid IN ('users'::regclass, 'orders'::regclass, 'events'::regclass) AND NOT i.indisprimary";

/// The order and parameters of the measured workload run.
const WORKLOAD_SEED: u64 = 0x1DE7_A5D1_CE00_0001;
/// Another order and other parameters for the warm-up before each timed run.
const WARM_UP_SEED: u64 = 0x1DE7_A5D1_CE00_0002;
/// Calls of each shape in the untimed warm-up before each timed run on
/// the same connection: the tables and the new indexes read, and each
/// prepared statement past the five custom plans after which PostgreSQL
/// may settle on its generic plan, as in the timed run.
const WARM_UP_CALLS_PER_SHAPE: usize = 6;
/// What the issue asks of the agent's share of the ideal saving.
const TARGET_SHARE: f64 = 0.9;

/// A B-tree index of the ideal set: a table and its key columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IdealIndex {
    table: &'static str,
    columns: &'static [&'static str],
}

impl IdealIndex {
    fn label(&self) -> String {
        index_label(self.table, self.columns)
    }

    fn create_sql(&self) -> String {
        format!("CREATE INDEX ON {} ({})", self.table, self.columns.join(", "))
    }
}

/// `users(email)`, `orders(user_id, created_at)`.
fn index_label(table: &str, columns: &[&str]) -> String {
    format!("{table}({})", columns.join(", "))
}

const USERS_EMAIL: IdealIndex = IdealIndex {
    table: "users",
    columns: &["email"],
};
const USERS_CREATED_AT: IdealIndex = IdealIndex {
    table: "users",
    columns: &["created_at"],
};
const USERS_COUNTRY_STATUS_CREATED_AT: IdealIndex = IdealIndex {
    table: "users",
    columns: &["country", "status", "created_at"],
};
const ORDERS_USER_ID_CREATED_AT: IdealIndex = IdealIndex {
    table: "orders",
    columns: &["user_id", "created_at"],
};
const ORDERS_COUPON_CODE: IdealIndex = IdealIndex {
    table: "orders",
    columns: &["coupon_code"],
};
const ORDERS_CREATED_AT: IdealIndex = IdealIndex {
    table: "orders",
    columns: &["created_at"],
};
const ORDERS_SHIPPED_AT: IdealIndex = IdealIndex {
    table: "orders",
    columns: &["shipped_at"],
};
const EVENTS_ACCOUNT_ID_KIND: IdealIndex = IdealIndex {
    table: "events",
    columns: &["account_id", "kind"],
};
const EVENTS_SESSION_ID: IdealIndex = IdealIndex {
    table: "events",
    columns: &["session_id"],
};
const EVENTS_KIND_CREATED_AT: IdealIndex = IdealIndex {
    table: "events",
    columns: &["kind", "created_at"],
};
const EVENTS_CREATED_AT: IdealIndex = IdealIndex {
    table: "events",
    columns: &["created_at"],
};

/// A statement of the workload, its parameters bound (so that
/// pg_stat_statements keeps one entry per shape).
struct Shape {
    name: &'static str,
    sql: &'static str,
    /// Calls per workload run: the shape's weight.
    calls: usize,
    /// The indexes of the ideal set the shape needs; empty when no index
    /// beyond the primary keys helps it.
    ideal: &'static [IdealIndex],
    params: fn(&mut SplitMix) -> Vec<Param>,
}

const SHAPES: [Shape; 20] = [
    // Equality on a unique-valued column: one row of 200,000.
    Shape {
        name: "user_by_email",
        sql: "SELECT id, name, status FROM users WHERE email = $1",
        calls: 200,
        ideal: &[USERS_EMAIL],
        params: user_email,
    },
    // A one-day range of two years (~0.14% of the rows), in its order: an
    // index on the range column gives the rows sorted.
    Shape {
        name: "users_signed_up_on_a_day",
        sql: "SELECT id, email, created_at FROM users WHERE created_at >= $1 AND created_at < $2 \
              ORDER BY created_at",
        calls: 40,
        ideal: &[USERS_CREATED_AT],
        params: order_day,
    },
    // Two equalities (1.8% of the rows for 'active', less for the others) and ORDER
    // BY ... LIMIT: the equalities then the order column read the 20 rows
    // in order and stop, no sort.
    Shape {
        name: "latest_users_of_country_and_status",
        sql: "SELECT id, email, created_at FROM users WHERE country = $1 AND status = $2 \
              ORDER BY created_at DESC LIMIT 20",
        calls: 60,
        ideal: &[USERS_COUNTRY_STATUS_CREATED_AT],
        params: country_and_user_status,
    },
    // A full aggregate of a column no index holds: every row is read.
    Shape {
        name: "order_totals_per_status",
        sql: "SELECT status, count(*), avg(total_cents)::float8 FROM orders GROUP BY status",
        calls: 10,
        ideal: &[],
        params: no_params,
    },
    // A filter that keeps 90% of the rows: a sequential scan is the best
    // plan with or without an index on status.
    Shape {
        name: "active_users_per_country",
        sql: "SELECT country, count(*) FROM users WHERE status = $1 GROUP BY country",
        calls: 10,
        ideal: &[],
        params: active_status,
    },
    // Equality and a range on the next column, ORDER BY that column LIMIT:
    // (user_id, created_at) reads the newest rows of the user in order.
    Shape {
        name: "recent_orders_of_user",
        sql: "SELECT id, status, total_cents, created_at FROM orders WHERE user_id = $1 AND created_at >= $2 \
              ORDER BY created_at DESC LIMIT 10",
        calls: 150,
        ideal: &[ORDERS_USER_ID_CREATED_AT],
        params: user_and_order_day,
    },
    // A join on the foreign key from a selective filter: the user by email,
    // then its orders by user_id (the leading column of the orders index
    // above, so no index of its own).
    Shape {
        name: "orders_of_user_by_email",
        sql: "SELECT o.id, o.total_cents, o.created_at FROM users u JOIN orders o ON o.user_id = u.id \
              WHERE u.email = $1",
        calls: 100,
        ideal: &[USERS_EMAIL, ORDERS_USER_ID_CREATED_AT],
        params: user_email,
    },
    // Equality on a mostly-NULL column: ~20 rows of 400,000.
    Shape {
        name: "orders_with_coupon",
        sql: "SELECT id, user_id, total_cents FROM orders WHERE coupon_code = $1",
        calls: 30,
        ideal: &[ORDERS_COUPON_CODE],
        params: coupon_code,
    },
    // An account's ~20 events: account_id as the leading column finds them (a sort
    // of 20 rows costs nothing), so the (account_id, kind) index of the
    // shape after it serves this one too.
    Shape {
        name: "latest_events_of_account",
        sql: "SELECT id, kind, created_at FROM events WHERE account_id = $1 ORDER BY created_at DESC LIMIT 20",
        calls: 80,
        ideal: &[EVENTS_ACCOUNT_ID_KIND],
        params: event_account,
    },
    // A one-day range (~550 rows) and a filter keeping 20% of them: the
    // range column is the index, the filter is applied to its rows.
    Shape {
        name: "large_orders_on_a_day",
        sql: "SELECT id, user_id, total_cents FROM orders WHERE created_at >= $1 AND created_at < $2 \
              AND total_cents >= $3",
        calls: 40,
        ideal: &[ORDERS_CREATED_AT],
        params: order_day_and_total,
    },
    // A one-day range of a column that is NULL for 70% of the rows (~160
    // rows): an index-only scan counts them.
    Shape {
        name: "orders_shipped_on_a_day",
        sql: "SELECT count(*) FROM orders WHERE shipped_at >= $1 AND shipped_at < $2",
        calls: 20,
        ideal: &[ORDERS_SHIPPED_AT],
        params: order_day,
    },
    // A range keeping 40-60% of the rows, then an aggregate of all of them:
    // no index beats reading the table.
    Shape {
        name: "top_spenders_since",
        sql: "SELECT user_id, sum(total_cents) FROM orders WHERE created_at >= $1 GROUP BY user_id \
              ORDER BY 2 DESC LIMIT 10",
        calls: 5,
        ideal: &[],
        params: about_a_year_ago,
    },
    // Multi-column equality: ~20 events of the account, one of the kind.
    // Either column order serves it; (account_id, kind) also serves
    // latest_events_of_account.
    Shape {
        name: "events_of_account_and_kind",
        sql: "SELECT id, created_at FROM events WHERE kind = $1 AND account_id = $2",
        calls: 120,
        ideal: &[EVENTS_ACCOUNT_ID_KIND],
        params: kind_and_event_account,
    },
    // A self-join on session_id from one event (its primary key): the ~4
    // events of the session by session_id.
    Shape {
        name: "events_of_same_session",
        sql: "SELECT other.id, other.kind, other.created_at FROM events e \
              JOIN events other ON other.session_id = e.session_id WHERE e.id = $1",
        calls: 50,
        ideal: &[EVENTS_SESSION_ID],
        params: event_id,
    },
    // Equality keeping 5% of the rows and ORDER BY ... LIMIT 50: (kind,
    // created_at) reads the 50 newest of the kind, no scan of 20,000 rows
    // and no sort.
    Shape {
        name: "latest_events_of_kind",
        sql: "SELECT id, account_id, created_at FROM events WHERE kind = $1 ORDER BY created_at DESC LIMIT 50",
        calls: 60,
        ideal: &[EVENTS_KIND_CREATED_AT],
        params: event_kind,
    },
    // A range keeping 55-80% of the rows, aggregated: no index helps.
    Shape {
        name: "events_per_kind_since",
        sql: "SELECT kind, count(*) FROM events WHERE created_at >= $1 GROUP BY kind",
        calls: 10,
        ideal: &[],
        params: most_of_the_event_days,
    },
    // A ten-minute range of 90 days (~30 rows).
    Shape {
        name: "events_in_ten_minutes",
        sql: "SELECT id, account_id, kind FROM events WHERE created_at >= $1 AND created_at < $2",
        calls: 30,
        ideal: &[EVENTS_CREATED_AT],
        params: ten_event_minutes,
    },
    // A join of every order with its user, aggregated: hash join of both
    // tables whole, no index helps.
    Shape {
        name: "revenue_per_country",
        sql: "SELECT u.country, sum(o.total_cents) FROM users u JOIN orders o ON o.user_id = u.id \
              GROUP BY u.country",
        calls: 5,
        ideal: &[],
        params: no_params,
    },
    // Equality on the user (~2 orders) and on a status (5-60%): the
    // user_id leading column finds them, the status filters 2 rows; the
    // (user_id, created_at) index serves it.
    Shape {
        name: "orders_of_user_with_status",
        sql: "SELECT id, total_cents FROM orders WHERE user_id = $1 AND status = $2",
        calls: 60,
        ideal: &[ORDERS_USER_ID_CREATED_AT],
        params: user_and_order_status,
    },
    // Lookups by primary key: served already, no index to add.
    Shape {
        name: "users_by_ids",
        sql: "SELECT id, email, status FROM users WHERE id = ANY($1)",
        calls: 100,
        ideal: &[],
        params: user_ids,
    },
];

/// A bound parameter.
#[derive(Debug, Clone)]
enum Param {
    Text(String),
    Int(i64),
    Time(DateTime<Utc>),
    Ints(Vec<i64>),
}

/// A uniformly random integer in `low..high`.
fn between(random: &mut SplitMix, low: u64, high: u64) -> u64 {
    low + random.next() % (high - low)
}

fn at_s(unix_s: i64) -> Param {
    Param::Time(DateTime::from_timestamp(unix_s, 0).unwrap_or_default())
}

fn no_params(_: &mut SplitMix) -> Vec<Param> {
    Vec::new()
}

fn random_user(random: &mut SplitMix) -> Param {
    Param::Int(between(random, 1, USERS + 1) as i64)
}

fn user_email(random: &mut SplitMix) -> Vec<Param> {
    let id = between(random, 1, USERS + 1);
    vec![Param::Text(format!("user{id}@example.com"))]
}

fn user_ids(random: &mut SplitMix) -> Vec<Param> {
    let ids = (0..10).map(|_| between(random, 1, USERS + 1) as i64).collect();
    vec![Param::Ints(ids)]
}

/// `[start, start + length)` with `start` a random multiple of `step_s`
/// within `days` days from `from_s`.
fn window(random: &mut SplitMix, from_s: i64, days: i64, step_s: i64, length_s: i64) -> Vec<Param> {
    let steps = (days * DAY_S - length_s) / step_s;
    let start_s = from_s + between(random, 0, steps as u64) as i64 * step_s;
    vec![at_s(start_s), at_s(start_s + length_s)]
}

/// A day of the two years of sign-ups, orders and shipments.
fn order_day(random: &mut SplitMix) -> Vec<Param> {
    window(random, ORDERS_START_S, ORDERS_DAYS, DAY_S, DAY_S)
}

fn country_and_user_status(random: &mut SplitMix) -> Vec<Param> {
    let country = format!("C{:02}", between(random, 0, COUNTRIES));
    let status = USER_STATUSES[between(random, 0, USER_STATUSES.len() as u64) as usize];
    vec![Param::Text(country), Param::Text(status.into())]
}

fn active_status(_: &mut SplitMix) -> Vec<Param> {
    vec![Param::Text(USER_STATUSES[0].into())]
}

/// A user and a day of the first year of orders (since which it has about
/// half or more of its orders).
fn user_and_order_day(random: &mut SplitMix) -> Vec<Param> {
    let user = random_user(random);
    let day = between(random, 0, ORDERS_DAYS as u64 / 2) as i64;
    vec![user, at_s(ORDERS_START_S + day * DAY_S)]
}

fn user_and_order_status(random: &mut SplitMix) -> Vec<Param> {
    let user = random_user(random);
    let status = ORDER_STATUSES[between(random, 0, ORDER_STATUSES.len() as u64) as usize];
    vec![user, Param::Text(status.into())]
}

fn coupon_code(random: &mut SplitMix) -> Vec<Param> {
    vec![Param::Text(format!("CPN{}", between(random, 0, COUPONS)))]
}

/// A day of orders and a lower bound of the total that keeps 20% of them.
fn order_day_and_total(random: &mut SplitMix) -> Vec<Param> {
    let mut params = order_day(random);
    params.push(Param::Int(40_000));
    params
}

/// A day 300 to 430 days into the 730 of the orders.
fn about_a_year_ago(random: &mut SplitMix) -> Vec<Param> {
    let day = between(random, 300, 430) as i64;
    vec![at_s(ORDERS_START_S + day * DAY_S)]
}

fn event_account(random: &mut SplitMix) -> Vec<Param> {
    vec![Param::Int(between(random, 1, EVENT_ACCOUNTS + 1) as i64)]
}

fn random_event_kind(random: &mut SplitMix) -> Param {
    Param::Text(format!("kind_{}", between(random, 0, EVENT_KINDS)))
}

fn event_kind(random: &mut SplitMix) -> Vec<Param> {
    vec![random_event_kind(random)]
}

fn kind_and_event_account(random: &mut SplitMix) -> Vec<Param> {
    let kind = random_event_kind(random);
    vec![kind, Param::Int(between(random, 1, EVENT_ACCOUNTS + 1) as i64)]
}

fn event_id(random: &mut SplitMix) -> Vec<Param> {
    vec![Param::Int(between(random, 1, EVENTS + 1) as i64)]
}

/// A day 20 to 40 days into the 90 of the events.
fn most_of_the_event_days(random: &mut SplitMix) -> Vec<Param> {
    let day = between(random, 20, 40) as i64;
    vec![at_s(EVENTS_START_S + day * DAY_S)]
}

fn ten_event_minutes(random: &mut SplitMix) -> Vec<Param> {
    window(random, EVENTS_START_S, EVENTS_DAYS, 60, 600)
}

/// The ideal set: every index some shape needs, each once, in the order
/// the shapes name them.
fn ideal_set() -> Vec<IdealIndex> {
    let mut set: Vec<IdealIndex> = Vec::new();
    for index in SHAPES.iter().flat_map(|shape| shape.ideal) {
        if !set.contains(index) {
            set.push(*index);
        }
    }
    set
}

/// One call of a workload run: a shape and its parameters.
struct Call {
    shape: usize,
    params: Vec<Param>,
}

/// `calls_of(shape)` calls of every shape, in an order and with
/// parameters drawn from `seed`: the same seed, the same run.
fn workload(seed: u64, calls_of: impl Fn(&Shape) -> usize) -> Vec<Call> {
    let mut random = SplitMix(seed);
    let mut shapes: Vec<usize> = SHAPES
        .iter()
        .enumerate()
        .flat_map(|(i, shape)| std::iter::repeat_n(i, calls_of(shape)))
        .collect();
    shuffle(&mut shapes, &mut random);
    shapes
        .into_iter()
        .map(|shape| Call {
            shape,
            params: (SHAPES[shape].params)(&mut random),
        })
        .collect()
}

/// Fisher-Yates.
fn shuffle<T>(items: &mut [T], random: &mut SplitMix) {
    for i in (1..items.len()).rev() {
        let j = (random.next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

fn bound(sql: &'static str, params: &[Param]) -> sqlx::query::Query<'static, Postgres, PgArguments> {
    params
        .iter()
        .fold(sqlx::query(sql), |statement, param| match param.clone() {
            Param::Text(text) => statement.bind(text),
            Param::Int(int) => statement.bind(int),
            Param::Time(time) => statement.bind(time),
            Param::Ints(ints) => statement.bind(ints),
        })
}

/// Runs the calls one after another on `conn`, fetching every row; the
/// time each shape took in all, ms.
async fn run_workload(conn: &mut PgConnection, calls: &[Call]) -> anyhow::Result<Vec<f64>> {
    let mut shape_ms = vec![0.0; SHAPES.len()];
    for call in calls {
        let shape = &SHAPES[call.shape];
        let statement = bound(shape.sql, &call.params);
        let started = Instant::now();
        statement
            .fetch_all(&mut *conn)
            .await
            .with_context(|| format!("the workload's shape {}", shape.name))?;
        shape_ms[call.shape] += started.elapsed().as_secs_f64() * 1000.0;
    }
    Ok(shape_ms)
}

/// The tables loaded and vacuumed, and pg_stat_statements of this
/// database emptied of the load's statements.
async fn load_tables(conn: &mut PgConnection) -> anyhow::Result<()> {
    eprintln!(
        "index advice: loading users ({USERS} rows), orders ({ORDERS}) and events ({EVENTS}), primary keys only"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(load_sql()))
        .execute(&mut *conn)
        .await
        .context("loading the tables")?;
    sqlx::query(VACUUM_ANALYZE).execute(&mut *conn).await?;
    sqlx::query(CREATE_PG_STAT_STATEMENTS)
        .execute(&mut *conn)
        .await
        .context("pg_stat_statements (the test PostgreSQL preloads it)")?;
    sqlx::query(RESET_STATEMENTS).execute(&mut *conn).await?;
    Ok(())
}

/// The agent's default configuration, but for `--advice-indexes-max`.
fn agent_config(args: &Args) -> QueryAgentConfig {
    let mut config = QueryAgentConfig::default();
    if let Some(indexes_max) = args.advice_indexes_max {
        config.advisor.indexes_max = indexes_max;
    }
    config
}

/// The agent's advice over the workload pg_stat_statements holds, and how
/// long it took, ms.
async fn timed_advice(url: &str, config: &QueryAgentConfig) -> anyhow::Result<(Value, f64)> {
    let pool = PgPoolOptions::new().max_connections(4).connect(url).await?;
    eprintln!(
        "index advice: the query agent's advice (query::agent::advise, at most {} indexes)",
        config.advisor.indexes_max
    );
    let started = Instant::now();
    let advice = query::agent::advise(&pool, config, None).await;
    let analysis_ms = started.elapsed().as_secs_f64() * 1000.0;
    pool.close().await;
    let advice = advice.map_err(|e| anyhow!("the query agent's advice: {e}"))?;
    Ok((advice, analysis_ms))
}

/// An index the agent recommends.
struct Recommended {
    label: String,
    /// Its `create_sql` without CONCURRENTLY: the same index, built
    /// faster, as nothing else writes.
    create_sql: String,
    /// The workload time the agent estimates it saves, ms.
    estimated_saved_ms: f64,
}

fn recommendations(advice: &Value) -> anyhow::Result<Vec<Recommended>> {
    if advice["hypopg"] != json!(true) {
        bail!(
            "the query agent could not cost candidates with HypoPG: {}",
            advice["error"]
        );
    }
    let listed = advice["recommendations"]
        .as_array()
        .context("the advice has no recommendations list")?;
    listed.iter().map(recommended).collect()
}

fn recommended(recommendation: &Value) -> anyhow::Result<Recommended> {
    let table = recommendation["table"]
        .as_str()
        .context("a recommendation without a table")?;
    let columns = recommendation["columns"]
        .as_array()
        .context("a recommendation without columns")?
        .iter()
        .map(|column| column.as_str().context("a column that is not a string"))
        .collect::<anyhow::Result<Vec<&str>>>()?;
    let create_sql = recommendation["create_sql"]
        .as_str()
        .context("a recommendation without create_sql")?;
    Ok(Recommended {
        label: index_label(table.strip_prefix("public.").unwrap_or(table), &columns),
        create_sql: create_sql.replacen("CREATE INDEX CONCURRENTLY ", "CREATE INDEX ", 1),
        estimated_saved_ms: recommendation["saved_ms"].as_f64().unwrap_or(0.0),
    })
}

/// The ideal indexes no recommendation covers (has their columns as its
/// leading ones), each with the agent's reason for leaving it out, on
/// stderr.
fn report_missed(ideal: &[IdealIndex], recommended: &[Recommended], advice: &Value) {
    for index in ideal {
        let label = index.label();
        let prefix = label.trim_end_matches(')');
        if recommended
            .iter()
            .any(|r| r.label == label || r.label.starts_with(&format!("{prefix}, ")))
        {
            continue;
        }
        let reason = advice["rejected"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| {
                r["table"]
                    .as_str()
                    .is_some_and(|t| t.ends_with(&format!(".{}", index.table)))
                    && r["columns"] == json!(index.columns)
            })
            .and_then(|r| r["reason"].as_str())
            .unwrap_or("not among its candidates");
        eprintln!("index advice: the agent leaves out the ideal {label}: {reason}");
    }
}

/// The indexes a timed run has besides the primary keys.
struct IndexSet {
    name: &'static str,
    create_sql: Vec<String>,
}

async fn build_indexes(conn: &mut PgConnection, create_sql: &[String]) -> anyhow::Result<()> {
    for statement in create_sql {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement.as_str()))
            .execute(&mut *conn)
            .await
            .with_context(|| format!("building an index: {statement}"))?;
    }
    Ok(())
}

async fn drop_extra_indexes(conn: &mut PgConnection) -> anyhow::Result<()> {
    let names: Vec<String> = sqlx::query_scalar(EXTRA_INDEXES).fetch_all(&mut *conn).await?;
    for name in names {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP INDEX {name}")))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// One timed run of `calls` with `indexes` built, after the untimed
/// `warm_up` on the same (new) connection; the indexes are dropped after.
/// Each shape's time, ms.
async fn timed_run(
    url: &str,
    indexes: &IndexSet,
    warm_up: &[Call],
    calls: &[Call],
) -> anyhow::Result<Vec<f64>> {
    let mut conn = PgConnection::connect(url).await?;
    let measured = async {
        build_indexes(&mut conn, &indexes.create_sql).await?;
        run_workload(&mut conn, warm_up).await?;
        run_workload(&mut conn, calls).await
    }
    .await;
    let dropped = drop_extra_indexes(&mut conn).await;
    conn.close().await?;
    let shape_ms = measured?;
    dropped?;
    Ok(shape_ms)
}

/// Each set's runs: `[set][round]`, each shape's time, ms. The sets run
/// in alternating order (forwards, then backwards), so that a drift of
/// this machine's speed weighs on each alike.
async fn measure(
    args: &Args,
    url: &str,
    sets: &[IndexSet],
    calls: &[Call],
) -> anyhow::Result<Vec<Vec<Vec<f64>>>> {
    let warm_up = workload(WARM_UP_SEED, |_| WARM_UP_CALLS_PER_SHAPE);
    let mut runs = vec![Vec::new(); sets.len()];
    for round in 1..=args.advice_rounds {
        let mut order: Vec<usize> = (0..sets.len()).collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for s in order {
            eprintln!(
                "index advice, round {round}: {} calls with {} ({} indexes)",
                calls.len(),
                sets[s].name,
                sets[s].create_sql.len()
            );
            runs[s].push(timed_run(url, &sets[s], &warm_up, calls).await?);
        }
    }
    Ok(runs)
}

fn total_ms(shape_ms: &[f64]) -> f64 {
    shape_ms.iter().sum()
}

/// The agent's saving over the ideal set's.
fn share_of_ideal_saving(no_index_ms: f64, ideal_ms: f64, agent_ms: f64) -> f64 {
    (no_index_ms - agent_ms) / (no_index_ms - ideal_ms)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Each shape's median time with each set, on stderr: where the agent's
/// indexes fall short of the ideal set, or beat it.
fn report_shapes(runs: &[Vec<Vec<f64>>]) {
    eprintln!(
        "index advice: median ms per shape   {:>5} {:>9} {:>9} {:>9}",
        "calls", "no index", "ideal", "agent"
    );
    for (i, shape) in SHAPES.iter().enumerate() {
        let ms: Vec<f64> = runs
            .iter()
            .map(|rounds| median(&rounds.iter().map(|r| r[i]).collect::<Vec<_>>()))
            .collect();
        eprintln!(
            "  {:<34} {:>5} {:>9.0} {:>9.0} {:>9.0}",
            shape.name, shape.calls, ms[0], ms[1], ms[2]
        );
    }
}

/// `index_advice_quality` on the scratch database `db`.
pub(crate) async fn index_advice_quality(args: &Args, db: &ScratchDb) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(&db.url).await?;
    load_tables(&mut conn).await?;
    let calls = workload(WORKLOAD_SEED, |shape| shape.calls);
    eprintln!(
        "index advice: the workload once into pg_stat_statements ({} calls of {} shapes)",
        calls.len(),
        SHAPES.len()
    );
    run_workload(&mut conn, &calls).await?;
    conn.close().await?;

    let config = agent_config(args);
    let (advice, analysis_ms) = timed_advice(&db.url, &config).await?;
    let recommended = recommendations(&advice)?;
    for index in &recommended {
        eprintln!(
            "index advice: the agent recommends {} (estimated to save {:.0} ms)",
            index.label, index.estimated_saved_ms
        );
    }
    if let Some(not_explained) = advice["not_explained"].as_array().filter(|l| !l.is_empty()) {
        eprintln!("index advice: statements the agent could not explain: {not_explained:?}");
    }
    let ideal = ideal_set();
    report_missed(&ideal, &recommended, &advice);
    let sets = [
        IndexSet {
            name: "no extra index",
            create_sql: Vec::new(),
        },
        IndexSet {
            name: "the ideal set",
            create_sql: ideal.iter().map(IdealIndex::create_sql).collect(),
        },
        IndexSet {
            name: "the agent's set",
            create_sql: recommended.iter().map(|r| r.create_sql.clone()).collect(),
        },
    ];
    let runs = measure(args, &db.url, &sets, &calls).await?;
    report_shapes(&runs);

    let totals: Vec<Vec<f64>> = runs
        .iter()
        .map(|rounds| rounds.iter().map(|shape_ms| total_ms(shape_ms)).collect())
        .collect();
    let [no_index_ms, ideal_ms, agent_ms] = [median(&totals[0]), median(&totals[1]), median(&totals[2])];
    if no_index_ms - ideal_ms <= 0.0 {
        bail!(
            "the ideal indexes saved no workload time ({no_index_ms:.0} ms without, {ideal_ms:.0} ms with): no share to measure"
        );
    }
    let share = share_of_ideal_saving(no_index_ms, ideal_ms, agent_ms);
    let round_shares: Vec<f64> = (0..args.advice_rounds)
        .map(|r| round3(share_of_ideal_saving(totals[0][r], totals[1][r], totals[2][r])))
        .collect();
    print(json!({
        "name": "index_advice_quality", "value": round3(share), "unit": "share of ideal saving",
        "target_ratio": TARGET_SHARE,
        "baseline_name": "ideal_indexes", "baseline_value": 1.0, "ratio": round3(share),
        "rounds": round_shares,
        "analysis_ms": round(analysis_ms),
        "workload_ms_no_index": round(no_index_ms), "workload_ms_ideal": round(ideal_ms),
        "workload_ms_agent": round(agent_ms),
        "ideal_saved_ms": round(no_index_ms - ideal_ms), "agent_saved_ms": round(no_index_ms - agent_ms),
        "indexes_max": config.advisor.indexes_max,
        "recommended": recommended.iter().map(|r| r.label.clone()).collect::<Vec<_>>(),
        "ideal": ideal.iter().map(IdealIndex::label).collect::<Vec<_>>(),
        "shapes": SHAPES.len(), "tables": TABLES.len(), "calls": calls.len(),
    }));
    Ok(())
}
