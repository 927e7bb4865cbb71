//! Tests of the plan analysis and the rewrite hints.

use std::cell::RefCell;

use agents::sql::quote_ident_if_needed;

use super::*;

fn explain(text: &str) -> Value {
    serde_json::from_str(text).expect("the fixture is JSON")
}

fn analyse(text: &str) -> PlanAnalysis {
    analyze_plan(&explain(text), &Thresholds::default()).expect("the plan analyses")
}

fn kinds(analysis: &PlanAnalysis) -> Vec<FindingKind> {
    analysis.findings.iter().map(|finding| finding.kind).collect()
}

fn finding(analysis: &PlanAnalysis, kind: FindingKind) -> &PlanFinding {
    analysis
        .findings
        .iter()
        .find(|finding| finding.kind == kind)
        .unwrap_or_else(|| panic!("no {kind:?} in {:#?}", analysis.findings))
}

fn hints(sql: &str, indexed_columns: &[&str]) -> Vec<RewriteHint> {
    rewrite_hints(sql, &|column| indexed_columns.contains(&column)).expect("the SQL parses")
}

fn hint_kinds(found: &[RewriteHint]) -> Vec<HintKind> {
    found.iter().map(|hint| hint.kind).collect()
}

// EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT * FROM orders WHERE status = 'pending'
const SELECTIVE_SEQ_SCAN: &str = r#"[
  {
    "Plan": {
      "Node Type": "Seq Scan",
      "Parallel Aware": false,
      "Async Capable": false,
      "Relation Name": "orders",
      "Alias": "orders",
      "Startup Cost": 0.00,
      "Total Cost": 4560.00,
      "Plan Rows": 140,
      "Plan Width": 45,
      "Actual Startup Time": 0.136,
      "Actual Total Time": 17.787,
      "Actual Rows": 200,
      "Actual Loops": 1,
      "Filter": "(status = 'pending'::text)",
      "Rows Removed by Filter": 199800,
      "Shared Hit Blocks": 2060,
      "Shared Read Blocks": 0,
      "Temp Read Blocks": 0,
      "Temp Written Blocks": 0
    },
    "Planning": {"Shared Hit Blocks": 95, "Shared Read Blocks": 1},
    "Planning Time": 0.565,
    "Triggers": [],
    "Execution Time": 17.873
  }
]"#;

// EXPLAIN (FORMAT JSON) of the same query: no actual rows.
const SEQ_SCAN_WITHOUT_ANALYZE: &str = r#"[
  {
    "Plan": {
      "Node Type": "Seq Scan",
      "Parallel Aware": false,
      "Async Capable": false,
      "Relation Name": "orders",
      "Alias": "orders",
      "Startup Cost": 0.00,
      "Total Cost": 4560.00,
      "Plan Rows": 140,
      "Plan Width": 45,
      "Filter": "(status = 'pending'::text)"
    }
  }
]"#;

// WHERE city = 'city1' AND zip = 'zip1', two perfectly correlated columns.
const CORRELATED_FILTER: &str = r#"[
  {
    "Plan": {
      "Node Type": "Seq Scan",
      "Parallel Aware": false,
      "Async Capable": false,
      "Relation Name": "orders",
      "Alias": "orders",
      "Startup Cost": 0.00,
      "Total Cost": 5060.00,
      "Plan Rows": 22,
      "Plan Width": 45,
      "Actual Startup Time": 0.021,
      "Actual Total Time": 25.9,
      "Actual Rows": 2000,
      "Actual Loops": 1,
      "Filter": "((city = 'city1'::text) AND (zip = 'zip1'::text))",
      "Rows Removed by Filter": 198000
    },
    "Planning Time": 0.510,
    "Triggers": [],
    "Execution Time": 26.078
  }
]"#;

// SET work_mem = '64kB'; SELECT * FROM orders ORDER BY amount (parallel).
const SPILLING_SORT: &str = r#"[
  {
    "Plan": {
      "Node Type": "Gather Merge",
      "Parallel Aware": false,
      "Async Capable": false,
      "Startup Cost": 25012.27,
      "Total Cost": 38541.68,
      "Plan Rows": 117647,
      "Plan Width": 45,
      "Actual Startup Time": 81.457,
      "Actual Total Time": 145.754,
      "Actual Rows": 200000,
      "Actual Loops": 1,
      "Workers Planned": 1,
      "Workers Launched": 1,
      "Temp Read Blocks": 5410,
      "Temp Written Blocks": 5877,
      "Plans": [
        {
          "Node Type": "Sort",
          "Parent Relationship": "Outer",
          "Parallel Aware": false,
          "Async Capable": false,
          "Startup Cost": 24012.26,
          "Total Cost": 24306.38,
          "Plan Rows": 117647,
          "Plan Width": 45,
          "Actual Startup Time": 75.709,
          "Actual Total Time": 91.929,
          "Actual Rows": 100000,
          "Actual Loops": 2,
          "Sort Key": ["amount"],
          "Sort Method": "external merge",
          "Sort Space Used": 5104,
          "Sort Space Type": "Disk",
          "Workers": [
            {
              "Worker Number": 0,
              "Sort Method": "external merge",
              "Sort Space Used": 7056,
              "Sort Space Type": "Disk"
            }
          ],
          "Plans": [
            {
              "Node Type": "Seq Scan",
              "Parent Relationship": "Outer",
              "Parallel Aware": true,
              "Async Capable": false,
              "Relation Name": "orders",
              "Alias": "orders",
              "Startup Cost": 0.00,
              "Total Cost": 3236.47,
              "Plan Rows": 117647,
              "Plan Width": 45,
              "Actual Startup Time": 0.008,
              "Actual Total Time": 9.928,
              "Actual Rows": 100000,
              "Actual Loops": 2,
              "Workers": []
            }
          ]
        }
      ]
    },
    "Planning Time": 0.531,
    "Triggers": [],
    "Execution Time": 155.529
  }
]"#;

// SET work_mem = '64kB'; SELECT o.id, c.email FROM orders o JOIN customers c ON c.id = o.customer_id
const SPILLING_HASH: &str = r#"[
  {
    "Plan": {
      "Node Type": "Hash Join",
      "Parallel Aware": false,
      "Async Capable": false,
      "Join Type": "Inner",
      "Startup Cost": 598.00,
      "Total Cost": 7411.11,
      "Plan Rows": 200000,
      "Plan Width": 33,
      "Actual Startup Time": 6.1,
      "Actual Total Time": 90.2,
      "Actual Rows": 200000,
      "Actual Loops": 1,
      "Inner Unique": true,
      "Hash Cond": "(o.customer_id = c.id)",
      "Plans": [
        {
          "Node Type": "Seq Scan",
          "Parent Relationship": "Outer",
          "Parallel Aware": false,
          "Async Capable": false,
          "Relation Name": "orders",
          "Alias": "o",
          "Startup Cost": 0.00,
          "Total Cost": 4060.00,
          "Plan Rows": 200000,
          "Plan Width": 12,
          "Actual Startup Time": 0.01,
          "Actual Total Time": 20.3,
          "Actual Rows": 200000,
          "Actual Loops": 1
        },
        {
          "Node Type": "Hash",
          "Parent Relationship": "Inner",
          "Parallel Aware": false,
          "Async Capable": false,
          "Startup Cost": 348.00,
          "Total Cost": 348.00,
          "Plan Rows": 20000,
          "Plan Width": 29,
          "Actual Startup Time": 5.9,
          "Actual Total Time": 5.9,
          "Actual Rows": 20000,
          "Actual Loops": 1,
          "Hash Buckets": 2048,
          "Original Hash Buckets": 2048,
          "Hash Batches": 16,
          "Original Hash Batches": 16,
          "Peak Memory Usage": 87,
          "Plans": [
            {
              "Node Type": "Seq Scan",
              "Parent Relationship": "Outer",
              "Parallel Aware": false,
              "Async Capable": false,
              "Relation Name": "customers",
              "Alias": "c",
              "Startup Cost": 0.00,
              "Total Cost": 348.00,
              "Plan Rows": 20000,
              "Plan Width": 29,
              "Actual Startup Time": 0.01,
              "Actual Total Time": 2.1,
              "Actual Rows": 20000,
              "Actual Loops": 1
            }
          ]
        }
      ]
    },
    "Planning Time": 1.055,
    "Triggers": [],
    "Execution Time": 95.706
  }
]"#;

// EXPLAIN (ANALYZE, VERBOSE) with a join on columns no index serves:
// SELECT c.email, o.id FROM orders o JOIN customers c ON c.email = o.city
// WHERE o.created_at < '2024-01-02' (hash, merge, material, memoize off).
const NESTED_LOOP_OVER_SEQ_SCAN: &str = r#"[
  {
    "Plan": {
      "Node Type": "Nested Loop",
      "Parallel Aware": false,
      "Async Capable": false,
      "Join Type": "Inner",
      "Startup Cost": 0.29,
      "Total Cost": 800778.85,
      "Plan Rows": 1339,
      "Plan Width": 33,
      "Actual Startup Time": 2601.1,
      "Actual Total Time": 2601.1,
      "Actual Rows": 0,
      "Actual Loops": 1,
      "Output": ["c.email", "o.id"],
      "Inner Unique": false,
      "Join Filter": "(o.city = c.email)",
      "Rows Removed by Join Filter": 28780000,
      "Plans": [
        {
          "Node Type": "Index Scan",
          "Parent Relationship": "Outer",
          "Parallel Aware": false,
          "Async Capable": false,
          "Scan Direction": "Forward",
          "Index Name": "orders_created_at_idx",
          "Relation Name": "orders",
          "Schema": "public",
          "Alias": "o",
          "Startup Cost": 0.29,
          "Total Cost": 56.85,
          "Plan Rows": 1339,
          "Plan Width": 17,
          "Actual Startup Time": 0.01,
          "Actual Total Time": 0.4,
          "Actual Rows": 1439,
          "Actual Loops": 1,
          "Output": ["o.id", "o.customer_id", "o.city"],
          "Index Cond": "(o.created_at < '2024-01-02 00:00:00+00'::timestamp with time zone)",
          "Rows Removed by Index Recheck": 0
        },
        {
          "Node Type": "Seq Scan",
          "Parent Relationship": "Inner",
          "Parallel Aware": false,
          "Async Capable": false,
          "Relation Name": "customers",
          "Schema": "public",
          "Alias": "c",
          "Startup Cost": 0.00,
          "Total Cost": 348.00,
          "Plan Rows": 20000,
          "Plan Width": 25,
          "Actual Startup Time": 0.003,
          "Actual Total Time": 1.2,
          "Actual Rows": 20000,
          "Actual Loops": 1439,
          "Output": ["c.id", "c.email", "c.country"]
        }
      ]
    },
    "Planning Time": 0.680,
    "Triggers": [],
    "Execution Time": 2601.942
  }
]"#;

/// Every test plan must pass without panicking and with the kinds given.
fn assert_kinds(text: &str, expected: &[FindingKind]) -> PlanAnalysis {
    let analysis = analyse(text);
    assert_eq!(kinds(&analysis), expected, "{:#?}", analysis.findings);
    analysis
}

#[test]
fn a_seq_scan_that_keeps_one_row_in_a_thousand_is_flagged() {
    let analysis = assert_kinds(SELECTIVE_SEQ_SCAN, &[FindingKind::SelectiveSeqScan]);
    let found = &analysis.findings[0];
    assert_eq!(found.relation.as_deref(), Some("orders"));
    assert_eq!(found.node_type, "Seq Scan");
    assert_eq!(
        found.message,
        "Seq Scan on orders reads 200,000 rows and keeps 200 of them (0.1%) with filter \
         (status = 'pending'::text)"
    );
    assert_eq!(
        found.advice,
        "Create an index on orders (status) so the filter becomes an index condition: \
         CREATE INDEX CONCURRENTLY ON orders (status);"
    );
}

#[test]
fn plan_totals_timings_and_scans_are_read() {
    let analysis = analyse(SELECTIVE_SEQ_SCAN);
    assert_eq!(analysis.total_cost, 4560.0);
    assert_eq!(analysis.execution_ms, Some(17.873));
    assert_eq!(analysis.planning_ms, Some(0.565));
    assert!(analysis.analyzed);
    assert_eq!(
        analysis.scans,
        vec![RelationScan {
            relation: "orders".to_owned(),
            alias: Some("orders".to_owned()),
            node_type: "Seq Scan".to_owned(),
            index_name: None,
            filter: Some("(status = 'pending'::text)".to_owned()),
            index_cond: None,
            estimated_rows: 140.0,
            actual_rows: Some(200.0),
            loops: Some(1.0),
            rows_removed_by_filter: Some(199800.0),
            total_cost: 4560.0,
        }]
    );
}

#[test]
fn the_object_inside_the_array_is_accepted_too() {
    let array = explain(SELECTIVE_SEQ_SCAN);
    let object = array[0].clone();
    let thresholds = Thresholds::default();
    assert_eq!(
        analyze_plan(&object, &thresholds).expect("the object analyses"),
        analyze_plan(&array, &thresholds).expect("the array analyses")
    );
}

#[test]
fn a_seq_scan_on_a_table_below_the_size_threshold_is_not_flagged() {
    let small = SELECTIVE_SEQ_SCAN
        .replace("\"Actual Rows\": 200,", "\"Actual Rows\": 2,")
        .replace("199800", "998");
    assert_kinds(&small, &[]);
}

#[test]
fn a_seq_scan_whose_filter_keeps_almost_half_the_table_is_not_flagged() {
    let broad = SELECTIVE_SEQ_SCAN
        .replace("\"Actual Rows\": 200,", "\"Actual Rows\": 86399,")
        .replace("\"Plan Rows\": 140,", "\"Plan Rows\": 87026,")
        .replace("199800", "113601");
    assert_kinds(&broad, &[]);
}

#[test]
fn without_analyze_a_seq_scan_is_judged_against_the_table_rows_given() {
    let plan = explain(SEQ_SCAN_WITHOUT_ANALYZE);
    let thresholds = Thresholds::default();
    let unknown_size = analyze_plan(&plan, &thresholds).expect("the plan analyses");
    assert!(!unknown_size.analyzed);
    assert!(unknown_size.findings.is_empty());
    assert_eq!(unknown_size.scans[0].actual_rows, None);

    let table_rows = HashMap::from([("public.orders".to_owned(), 200_000.0)]);
    let known_size =
        analyze_plan_with_table_rows(&plan, &thresholds, &table_rows).expect("the plan analyses");
    let found = finding(&known_size, FindingKind::SelectiveSeqScan);
    assert_eq!(
        found.message,
        "Seq Scan on orders reads all of its about 200,000 rows and is estimated to keep 140 (0.07%) \
         with filter (status = 'pending'::text)"
    );
    assert!(
        found
            .advice
            .contains("CREATE INDEX CONCURRENTLY ON orders (status);")
    );
}

#[test]
fn a_parallel_seq_scan_counts_the_rows_of_every_worker() {
    // Three processes each read a third of the table (per-loop averages).
    let plan = r#"{
      "Plan": {
        "Node Type": "Gather",
        "Parallel Aware": false,
        "Total Cost": 4000.0,
        "Plan Rows": 200,
        "Actual Rows": 200,
        "Actual Loops": 1,
        "Workers Planned": 2,
        "Workers Launched": 2,
        "Single Copy": false,
        "Plans": [
          {
            "Node Type": "Seq Scan",
            "Parent Relationship": "Outer",
            "Parallel Aware": true,
            "Relation Name": "events",
            "Alias": "events",
            "Total Cost": 3500.0,
            "Plan Rows": 83,
            "Actual Rows": 67,
            "Actual Loops": 3,
            "Filter": "(kind = 'refund'::text)",
            "Rows Removed by Filter": 1999933
          }
        ]
      },
      "Execution Time": 300.0
    }"#;
    let analysis = assert_kinds(plan, &[FindingKind::SelectiveSeqScan]);
    assert!(
        analysis.findings[0]
            .message
            .contains("reads 6,000,000 rows and keeps 201 of them")
    );
    assert_eq!(analysis.scans[0].actual_rows, Some(201.0));
    assert_eq!(analysis.scans[0].rows_removed_by_filter, Some(5_999_799.0));
}

#[test]
fn a_sort_that_spills_to_disk_is_flagged_with_work_mem_and_index_advice() {
    let analysis = assert_kinds(SPILLING_SORT, &[FindingKind::SpillingSort]);
    let found = &analysis.findings[0];
    assert_eq!(found.relation.as_deref(), Some("orders"));
    assert_eq!(found.node_type, "Sort");
    assert!(
        found
            .message
            .contains("Sort on amount spilled to disk: external merge wrote 6.9 MB")
    );
    assert!(
        found.advice.contains("SET LOCAL work_mem = '16MB'"),
        "{}",
        found.advice
    );
    assert!(
        found
            .advice
            .contains("CREATE INDEX CONCURRENTLY ON orders (amount);")
    );
}

#[test]
fn an_incremental_sort_spilling_its_full_sort_groups_is_flagged() {
    let plan = r#"[{
      "Plan": {
        "Node Type": "Incremental Sort",
        "Parallel Aware": false,
        "Total Cost": 16767.42,
        "Plan Rows": 200000,
        "Actual Rows": 200000,
        "Actual Loops": 1,
        "Sort Key": ["o.created_at", "o.id DESC"],
        "Presorted Key": ["o.created_at"],
        "Full-sort Groups": {
          "Group Count": 3,
          "Sort Methods Used": ["external merge"],
          "Sort Space Disk": {"Average Sort Space Used": 3000, "Peak Sort Space Used": 5000}
        },
        "Plans": [
          {
            "Node Type": "Index Scan",
            "Parent Relationship": "Outer",
            "Parallel Aware": false,
            "Index Name": "orders_created_at_idx",
            "Relation Name": "orders",
            "Alias": "o",
            "Total Cost": 7767.42,
            "Plan Rows": 200000,
            "Actual Rows": 200000,
            "Actual Loops": 1
          }
        ]
      },
      "Execution Time": 250.0
    }]"#;
    let analysis = assert_kinds(plan, &[FindingKind::SpillingSort]);
    let found = &analysis.findings[0];
    assert!(
        found
            .message
            .starts_with("Incremental Sort on o.created_at, o.id DESC spilled to disk")
    );
    assert!(found.message.contains("4.9 MB"));
    assert!(
        found
            .advice
            .contains("CREATE INDEX CONCURRENTLY ON orders (created_at, id DESC);")
    );
}

#[test]
fn a_filter_on_an_expression_advises_an_expression_index() {
    let plan = SELECTIVE_SEQ_SCAN.replace(
        "(status = 'pending'::text)",
        "(lower(email) = 'user1@example.com'::text)",
    );
    let analysis = assert_kinds(&plan, &[FindingKind::SelectiveSeqScan]);
    assert!(
        analysis.findings[0]
            .advice
            .ends_with("CREATE INDEX CONCURRENTLY ON orders ((lower(email)));"),
        "{}",
        analysis.findings[0].advice
    );
}

#[test]
fn a_filter_that_ors_two_columns_advises_an_index_on_each() {
    let plan = SELECTIVE_SEQ_SCAN.replace(
        "(status = 'pending'::text)",
        "((status = 'pending'::text) OR (city = 'city1'::text))",
    );
    let analysis = assert_kinds(&plan, &[FindingKind::SelectiveSeqScan]);
    assert!(analysis.findings[0].advice.contains("BitmapOr"));
    assert!(analysis.findings[0].advice.ends_with(
        "CREATE INDEX CONCURRENTLY ON orders (status); CREATE INDEX CONCURRENTLY ON orders (city);"
    ));
}

#[test]
fn a_filter_the_plan_cannot_express_as_sql_gets_general_advice() {
    let plan = SELECTIVE_SEQ_SCAN.replace("(status = 'pending'::text)", "(NOT (hashed SubPlan 1))");
    let analysis = assert_kinds(&plan, &[FindingKind::SelectiveSeqScan]);
    assert_eq!(
        analysis.findings[0].advice,
        "Create an index on orders covering the columns of the condition so the filter becomes an index \
         condition."
    );
}

#[test]
fn a_filter_chaining_thousands_of_ors_gets_general_advice_without_overflowing_the_stack() {
    let alternatives: Vec<String> = (0..5000)
        .map(|value| format!("(status = '{value}'::text)"))
        .collect();
    let plan = SELECTIVE_SEQ_SCAN.replace("(status = 'pending'::text)", &alternatives.join(" OR "));
    let analysis = assert_kinds(&plan, &[FindingKind::SelectiveSeqScan]);
    assert!(
        analysis.findings[0]
            .advice
            .contains("covering the columns of the condition")
    );
}

#[test]
fn a_sort_in_memory_is_not_flagged() {
    let in_memory = SPILLING_SORT
        .replace("\"Disk\"", "\"Memory\"")
        .replace("external merge", "quicksort");
    assert_kinds(&in_memory, &[]);
}

#[test]
fn a_hash_split_into_batches_is_flagged() {
    let analysis = assert_kinds(SPILLING_HASH, &[FindingKind::SpillingHash]);
    let found = &analysis.findings[0];
    assert_eq!(found.relation.as_deref(), Some("customers"));
    assert_eq!(
        found.message,
        "Hash of customers was split into 16 batches, spilling all but one to temporary files (peak \
         memory 87 kB per batch)"
    );
    assert!(found.advice.contains("about 1.4 MB"), "{}", found.advice);
    assert!(found.advice.contains("SET LOCAL work_mem = '2MB'"));
}

#[test]
fn a_hash_whose_batches_grew_at_run_time_reports_the_underestimate() {
    let grown = SPILLING_HASH.replace("\"Original Hash Batches\": 16", "\"Original Hash Batches\": 2");
    let analysis = assert_kinds(&grown, &[FindingKind::SpillingHash]);
    assert!(
        analysis.findings[0]
            .message
            .contains("the batches grew from the 2 planned at run time")
    );
}

#[test]
fn a_hash_in_one_batch_is_not_flagged() {
    let one_batch = SPILLING_HASH
        .replace("\"Hash Batches\": 16", "\"Hash Batches\": 1")
        .replace("\"Original Hash Batches\": 16", "\"Original Hash Batches\": 1");
    assert_kinds(&one_batch, &[]);
}

#[test]
fn a_hash_aggregate_that_spills_is_flagged() {
    // SET work_mem = '64kB'; SELECT customer_id, count(*) FROM orders GROUP BY customer_id
    let plan = r#"[{
      "Plan": {
        "Node Type": "Aggregate",
        "Strategy": "Hashed",
        "Partial Mode": "Simple",
        "Parallel Aware": false,
        "Async Capable": false,
        "Startup Cost": 35310.0,
        "Total Cost": 40697.43,
        "Plan Rows": 19993,
        "Plan Width": 12,
        "Actual Rows": 20000,
        "Actual Loops": 1,
        "Group Key": ["customer_id"],
        "Planned Partitions": 4,
        "HashAgg Batches": 85,
        "Peak Memory Usage": 177,
        "Disk Usage": 7080,
        "Plans": [
          {
            "Node Type": "Seq Scan",
            "Parent Relationship": "Outer",
            "Parallel Aware": false,
            "Relation Name": "orders",
            "Alias": "orders",
            "Total Cost": 4060.00,
            "Plan Rows": 200000,
            "Actual Rows": 200000,
            "Actual Loops": 1
          }
        ]
      },
      "Planning Time": 0.366,
      "Execution Time": 120.904
    }]"#;
    let analysis = assert_kinds(plan, &[FindingKind::SpillingHashAggregate]);
    let found = &analysis.findings[0];
    assert_eq!(found.relation.as_deref(), Some("orders"));
    assert_eq!(
        found.message,
        "HashAggregate over orders spilled to disk in 85 batches: 6.9 MB written to temporary files \
         (peak memory 177 kB)"
    );
    assert!(found.advice.contains("SET LOCAL work_mem = '8MB'"));
}

#[test]
fn a_lossy_bitmap_heap_scan_is_flagged() {
    // SET work_mem = '64kB'; SELECT * FROM orders WHERE created_at < '2024-06-01' AND amount > 50
    let plan = r#"[{
      "Plan": {
        "Node Type": "Bitmap Heap Scan",
        "Parallel Aware": false,
        "Async Capable": false,
        "Relation Name": "orders",
        "Alias": "orders",
        "Startup Cost": 3729.45,
        "Total Cost": 8789.45,
        "Plan Rows": 100137,
        "Plan Width": 45,
        "Actual Rows": 99800,
        "Actual Loops": 1,
        "Recheck Cond": "(created_at < '2024-06-01 00:00:00+00'::timestamp with time zone)",
        "Rows Removed by Index Recheck": 0,
        "Filter": "(amount > '50'::numeric)",
        "Rows Removed by Filter": 100200,
        "Exact Heap Blocks": 512,
        "Lossy Heap Blocks": 1548,
        "Plans": [
          {
            "Node Type": "Bitmap Index Scan",
            "Parent Relationship": "Outer",
            "Parallel Aware": false,
            "Async Capable": false,
            "Index Name": "orders_created_at_idx",
            "Total Cost": 3704.42,
            "Plan Rows": 200000,
            "Actual Rows": 200000,
            "Actual Loops": 1,
            "Index Cond": "(created_at < '2024-06-01 00:00:00+00'::timestamp with time zone)"
          }
        ]
      },
      "Execution Time": 48.818
    }]"#;
    let analysis = assert_kinds(plan, &[FindingKind::LossyBitmapScan]);
    assert!(
        analysis.findings[0]
            .message
            .starts_with("Bitmap Heap Scan on orders went lossy on 1,548 of 2,060 heap blocks")
    );
    let scan = &analysis.scans[0];
    assert_eq!(scan.index_name.as_deref(), Some("orders_created_at_idx"));
    assert_eq!(
        scan.index_cond.as_deref(),
        Some("(created_at < '2024-06-01 00:00:00+00'::timestamp with time zone)")
    );
    assert_eq!(analysis.scans.len(), 1, "a Bitmap Index Scan reads no table");
}

#[test]
fn an_index_scan_whose_filter_discards_nearly_all_rows_is_flagged() {
    // SELECT * FROM orders WHERE created_at < '2024-03-01' AND status = 'pending'
    let plan = r#"[{
      "Plan": {
        "Node Type": "Index Scan",
        "Parallel Aware": false,
        "Async Capable": false,
        "Scan Direction": "Forward",
        "Index Name": "orders_created_at_idx",
        "Relation Name": "orders",
        "Alias": "orders",
        "Startup Cost": 0.29,
        "Total Cost": 3600.94,
        "Plan Rows": 61,
        "Plan Width": 45,
        "Actual Rows": 86,
        "Actual Loops": 1,
        "Index Cond": "(created_at < '2024-03-01 00:00:00+00'::timestamp with time zone)",
        "Rows Removed by Index Recheck": 0,
        "Filter": "(status = 'pending'::text)",
        "Rows Removed by Filter": 86313
      },
      "Execution Time": 13.311
    }]"#;
    let analysis = assert_kinds(plan, &[FindingKind::IndexFilterDiscardsRows]);
    let found = &analysis.findings[0];
    assert!(found.message.contains("fetches 86,399 rows via (created_at <"));
    assert!(found.message.contains("discards 86,313 of them (99.9%)"));
    assert!(
        found
            .advice
            .contains("CREATE INDEX CONCURRENTLY ON orders (status, created_at);"),
        "{}",
        found.advice
    );
}

#[test]
fn a_nested_loop_rescanning_a_seq_scan_for_many_outer_rows_is_flagged() {
    let analysis = assert_kinds(
        NESTED_LOOP_OVER_SEQ_SCAN,
        &[FindingKind::LargeNestedLoop, FindingKind::Misestimate],
    );
    let found = &analysis.findings[0];
    assert_eq!(found.relation.as_deref(), Some("public.customers"));
    assert_eq!(
        found.message,
        "Nested Loop runs Seq Scan on public.customers c for each of its 1,439 outer rows, reading \
         20,000 rows each time, checking join filter (o.city = c.email) on every pair (28,780,000 \
         pairs discarded)"
    );
    assert_eq!(
        found.advice,
        "Create an index on public.customers (email) so each outer row becomes an index lookup instead \
         of a full scan: CREATE INDEX CONCURRENTLY ON public.customers (email);"
    );
}

#[test]
fn a_misestimated_join_advises_analyzing_the_joined_tables() {
    let analysis = analyse(NESTED_LOOP_OVER_SEQ_SCAN);
    let found = finding(&analysis, FindingKind::Misestimate);
    assert_eq!(found.relation, None);
    assert_eq!(found.node_type, "Nested Loop");
    assert_eq!(
        found.message,
        "Nested Loop was estimated at 1,339 rows and returned 0: 1,339× over-estimated"
    );
    assert!(
        found
            .advice
            .starts_with("ANALYZE public.orders, public.customers;")
    );
}

#[test]
fn without_analyze_a_nested_loop_is_judged_on_its_estimated_outer_rows() {
    let plan = r#"[{
      "Plan": {
        "Node Type": "Nested Loop",
        "Parallel Aware": false,
        "Join Type": "Inner",
        "Startup Cost": 0.29,
        "Total Cost": 800778.85,
        "Plan Rows": 1339,
        "Plan Width": 33,
        "Join Filter": "(o.city = c.email)",
        "Plans": [
          {
            "Node Type": "Index Scan",
            "Parent Relationship": "Outer",
            "Parallel Aware": false,
            "Index Name": "orders_created_at_idx",
            "Relation Name": "orders",
            "Alias": "o",
            "Total Cost": 56.85,
            "Plan Rows": 1339,
            "Plan Width": 17,
            "Index Cond": "(created_at < '2024-01-02 00:00:00+00'::timestamp with time zone)"
          },
          {
            "Node Type": "Seq Scan",
            "Parent Relationship": "Inner",
            "Parallel Aware": false,
            "Relation Name": "customers",
            "Alias": "c",
            "Total Cost": 348.00,
            "Plan Rows": 20000,
            "Plan Width": 25
          }
        ]
      }
    }]"#;
    let analysis = assert_kinds(plan, &[FindingKind::LargeNestedLoop]);
    let found = &analysis.findings[0];
    assert!(found.message.starts_with(
        "Nested Loop is estimated to run Seq Scan on customers c (about 20,000 rows) for each of its \
         1,339 outer rows"
    ));
    assert!(
        found
            .advice
            .ends_with("CREATE INDEX CONCURRENTLY ON customers (email);")
    );
}

#[test]
fn a_nested_loop_over_a_materialized_table_checked_by_join_filter_is_flagged() {
    let plan = r#"[{
      "Plan": {
        "Node Type": "Nested Loop",
        "Parallel Aware": false,
        "Join Type": "Inner",
        "Total Cost": 601073.27,
        "Plan Rows": 1,
        "Actual Rows": 0,
        "Actual Loops": 1,
        "Join Filter": "(c.country = o.zip)",
        "Rows Removed by Join Filter": 39800000,
        "Plans": [
          {
            "Node Type": "Seq Scan",
            "Parent Relationship": "Outer",
            "Parallel Aware": false,
            "Relation Name": "orders",
            "Alias": "o",
            "Total Cost": 4060.00,
            "Plan Rows": 200000,
            "Actual Rows": 200000,
            "Actual Loops": 1
          },
          {
            "Node Type": "Materialize",
            "Parent Relationship": "Inner",
            "Parallel Aware": false,
            "Total Cost": 13.76,
            "Plan Rows": 199,
            "Actual Rows": 199,
            "Actual Loops": 200000,
            "Plans": [
              {
                "Node Type": "Index Scan",
                "Parent Relationship": "Outer",
                "Parallel Aware": false,
                "Index Name": "customers_pkey",
                "Relation Name": "customers",
                "Alias": "c",
                "Total Cost": 12.77,
                "Plan Rows": 199,
                "Actual Rows": 199,
                "Actual Loops": 1,
                "Index Cond": "(id < 200)"
              }
            ]
          }
        ]
      },
      "Execution Time": 3045.932
    }]"#;
    let analysis = assert_kinds(plan, &[FindingKind::LargeNestedLoop]);
    let found = &analysis.findings[0];
    assert!(found.message.starts_with(
        "Nested Loop rescans the 199 materialized rows of Index Scan using customers_pkey on customers \
         c for each of its 200,000 outer rows"
    ));
    assert!(
        found
            .advice
            .ends_with("CREATE INDEX CONCURRENTLY ON customers (country);")
    );
}

#[test]
fn a_nested_loop_rescanning_a_handful_of_rows_is_not_flagged() {
    let tiny_inner = NESTED_LOOP_OVER_SEQ_SCAN
        .replace("\"Plan Rows\": 20000,", "\"Plan Rows\": 3,")
        .replace("\"Actual Rows\": 20000,", "\"Actual Rows\": 3,");
    assert!(!kinds(&analyse(&tiny_inner)).contains(&FindingKind::LargeNestedLoop));
}

#[test]
fn a_nested_loop_with_an_index_lookup_inside_has_nothing_to_report() {
    // The inner Index Scan finds a row one time in seven: PostgreSQL 15
    // prints "Actual Rows": 0 per loop, which is no misestimate.
    let plan = r#"[{
      "Plan": {
        "Node Type": "Nested Loop",
        "Parallel Aware": false,
        "Join Type": "Inner",
        "Total Cost": 15339.90,
        "Plan Rows": 3000,
        "Actual Rows": 2990,
        "Actual Loops": 1,
        "Plans": [
          {
            "Node Type": "Seq Scan",
            "Parent Relationship": "Outer",
            "Parallel Aware": false,
            "Relation Name": "orders",
            "Alias": "o",
            "Total Cost": 4060.00,
            "Plan Rows": 200000,
            "Actual Rows": 200000,
            "Actual Loops": 1
          },
          {
            "Node Type": "Memoize",
            "Parent Relationship": "Inner",
            "Parallel Aware": false,
            "Total Cost": 0.32,
            "Plan Rows": 1,
            "Actual Rows": 0,
            "Actual Loops": 200000,
            "Cache Key": "o.customer_id",
            "Cache Mode": "logical",
            "Cache Hits": 180000,
            "Cache Misses": 20000,
            "Cache Evictions": 0,
            "Cache Overflows": 0,
            "Peak Memory Usage": 1346,
            "Plans": [
              {
                "Node Type": "Index Scan",
                "Parent Relationship": "Outer",
                "Parallel Aware": false,
                "Index Name": "customers_pkey",
                "Relation Name": "customers",
                "Alias": "c",
                "Total Cost": 0.31,
                "Plan Rows": 1,
                "Actual Rows": 0,
                "Actual Loops": 20000,
                "Index Cond": "((id = o.customer_id) AND (id < 3000))",
                "Rows Removed by Index Recheck": 0,
                "Filter": "(country = 'FR'::text)",
                "Rows Removed by Filter": 0
              }
            ]
          }
        ]
      },
      "Planning Time": 1.679,
      "Execution Time": 94.933
    }]"#;
    let analysis = assert_kinds(plan, &[]);
    assert_eq!(analysis.scans.len(), 2);
}

#[test]
fn a_primary_key_lookup_has_nothing_to_report() {
    let plan = r#"[{
      "Plan": {
        "Node Type": "Index Scan",
        "Parallel Aware": false,
        "Async Capable": false,
        "Scan Direction": "Forward",
        "Index Name": "orders_pkey",
        "Relation Name": "orders",
        "Alias": "orders",
        "Startup Cost": 0.42,
        "Total Cost": 8.44,
        "Plan Rows": 1,
        "Plan Width": 45,
        "Actual Startup Time": 0.02,
        "Actual Total Time": 0.021,
        "Actual Rows": 1,
        "Actual Loops": 1,
        "Index Cond": "(id = 42)",
        "Rows Removed by Index Recheck": 0
      },
      "Planning Time": 0.531,
      "Triggers": [],
      "Execution Time": 0.082
    }]"#;
    let analysis = assert_kinds(plan, &[]);
    assert_eq!(analysis.scans[0].index_name.as_deref(), Some("orders_pkey"));
    assert_eq!(analysis.scans[0].index_cond.as_deref(), Some("(id = 42)"));
}

#[test]
fn correlated_filter_columns_misestimate_advises_extended_statistics() {
    let analysis = assert_kinds(
        CORRELATED_FILTER,
        &[FindingKind::SelectiveSeqScan, FindingKind::Misestimate],
    );
    let found = &analysis.findings[1];
    assert_eq!(found.relation.as_deref(), Some("orders"));
    assert_eq!(
        found.message,
        "Seq Scan on orders was estimated at 22 rows and returned 2,000: 91× under-estimated"
    );
    assert!(
        found.advice.contains(
            "CREATE STATISTICS orders_city_zip_stats (dependencies, mcv) ON city, zip FROM orders; \
             ANALYZE orders;"
        ),
        "{}",
        found.advice
    );
    assert!(
        analysis.findings[0]
            .advice
            .contains("CREATE INDEX CONCURRENTLY ON orders (city, zip);")
    );
}

#[test]
fn a_single_column_misestimate_advises_analyze_and_a_statistics_target() {
    let plan = CORRELATED_FILTER.replace(
        "((city = 'city1'::text) AND (zip = 'zip1'::text))",
        "(customer_id = 42)",
    );
    let analysis = analyse(&plan);
    let found = finding(&analysis, FindingKind::Misestimate);
    assert_eq!(
        found.advice,
        "ANALYZE orders; if the estimate stays off, raise the statistics target of customer_id: ALTER \
         TABLE orders ALTER COLUMN customer_id SET STATISTICS 1000; ANALYZE orders;"
    );
}

#[test]
fn a_misestimated_expression_advises_statistics_on_it() {
    let plan = CORRELATED_FILTER.replace(
        "((city = 'city1'::text) AND (zip = 'zip1'::text))",
        "(lower(city) = 'city1'::text)",
    );
    let analysis = analyse(&plan);
    let found = finding(&analysis, FindingKind::Misestimate);
    assert!(
        found
            .advice
            .contains("CREATE STATISTICS orders_lower_city_stats ON (lower(city)) FROM orders;"),
        "{}",
        found.advice
    );
}

#[test]
fn a_node_that_carries_its_childs_misestimate_is_not_reported_again() {
    let plan = r#"[{
      "Plan": {
        "Node Type": "Sort",
        "Parallel Aware": false,
        "Total Cost": 5061.0,
        "Plan Rows": 22,
        "Actual Rows": 2000,
        "Actual Loops": 1,
        "Sort Key": ["id"],
        "Sort Method": "quicksort",
        "Sort Space Used": 300,
        "Sort Space Type": "Memory",
        "Plans": [
          {
            "Node Type": "Seq Scan",
            "Parent Relationship": "Outer",
            "Parallel Aware": false,
            "Relation Name": "orders",
            "Alias": "orders",
            "Total Cost": 5060.00,
            "Plan Rows": 22,
            "Actual Rows": 2000,
            "Actual Loops": 1,
            "Filter": "(city = 'city1'::text)",
            "Rows Removed by Filter": 18000
          }
        ]
      },
      "Execution Time": 26.0
    }]"#;
    let analysis = assert_kinds(plan, &[FindingKind::Misestimate]);
    assert_eq!(analysis.findings[0].node_type, "Seq Scan");
}

#[test]
fn fewer_rows_than_estimated_under_a_limit_are_no_misestimate() {
    // SELECT * FROM orders WHERE created_at > '2024-01-01' ORDER BY created_at, id LIMIT 10
    let plan = r#"[{
      "Plan": {
        "Node Type": "Limit",
        "Parallel Aware": false,
        "Total Cost": 1.31,
        "Plan Rows": 10,
        "Actual Rows": 10,
        "Actual Loops": 1,
        "Plans": [
          {
            "Node Type": "Incremental Sort",
            "Parent Relationship": "Outer",
            "Parallel Aware": false,
            "Total Cost": 16767.42,
            "Plan Rows": 200000,
            "Actual Rows": 10,
            "Actual Loops": 1,
            "Sort Key": ["created_at", "id"],
            "Presorted Key": ["created_at"],
            "Full-sort Groups": {
              "Group Count": 1,
              "Sort Methods Used": ["quicksort"],
              "Sort Space Memory": {"Average Sort Space Used": 25, "Peak Sort Space Used": 25}
            },
            "Plans": [
              {
                "Node Type": "Index Scan",
                "Parent Relationship": "Outer",
                "Parallel Aware": false,
                "Scan Direction": "Forward",
                "Index Name": "orders_created_at_idx",
                "Relation Name": "orders",
                "Alias": "orders",
                "Total Cost": 7767.42,
                "Plan Rows": 200000,
                "Actual Rows": 11,
                "Actual Loops": 1,
                "Index Cond": "(created_at > '2024-01-01 00:00:00+00'::timestamp with time zone)",
                "Rows Removed by Index Recheck": 0
              }
            ]
          }
        ]
      },
      "Execution Time": 0.067
    }]"#;
    assert_kinds(plan, &[]);
}

#[test]
fn initplans_and_subplans_are_walked_and_listed_in_plan_order() {
    // EXPLAIN (ANALYZE, VERBOSE) SELECT c.email, (SELECT max(amount) FROM orders) FROM customers c
    // WHERE c.id NOT IN (SELECT customer_id FROM orders WHERE status = 'pending') AND c.id < 50
    let plan = r#"[{
      "Plan": {
        "Node Type": "Index Scan",
        "Parallel Aware": false,
        "Scan Direction": "Forward",
        "Index Name": "customers_pkey",
        "Relation Name": "customers",
        "Schema": "public",
        "Alias": "c",
        "Total Cost": 9129.63,
        "Plan Rows": 24,
        "Actual Rows": 48,
        "Actual Loops": 1,
        "Index Cond": "(c.id < 50)",
        "Rows Removed by Index Recheck": 0,
        "Filter": "(NOT (hashed SubPlan 2))",
        "Rows Removed by Filter": 1,
        "Plans": [
          {
            "Node Type": "Aggregate",
            "Strategy": "Plain",
            "Partial Mode": "Simple",
            "Parent Relationship": "InitPlan",
            "Subplan Name": "InitPlan 1 (returns $0)",
            "Parallel Aware": false,
            "Total Cost": 4560.01,
            "Plan Rows": 1,
            "Actual Rows": 1,
            "Actual Loops": 1,
            "Plans": [
              {
                "Node Type": "Seq Scan",
                "Parent Relationship": "Outer",
                "Parallel Aware": false,
                "Relation Name": "orders",
                "Schema": "public",
                "Alias": "orders",
                "Total Cost": 4060.00,
                "Plan Rows": 200000,
                "Actual Rows": 200000,
                "Actual Loops": 1
              }
            ]
          },
          {
            "Node Type": "Seq Scan",
            "Parent Relationship": "SubPlan",
            "Subplan Name": "SubPlan 2",
            "Parallel Aware": false,
            "Relation Name": "orders",
            "Schema": "public",
            "Alias": "orders_1",
            "Total Cost": 4560.00,
            "Plan Rows": 140,
            "Actual Rows": 200,
            "Actual Loops": 1,
            "Filter": "(orders_1.status = 'pending'::text)",
            "Rows Removed by Filter": 199800
          }
        ]
      },
      "Planning Time": 0.636,
      "Execution Time": 38.892
    }]"#;
    let analysis = assert_kinds(plan, &[FindingKind::SelectiveSeqScan]);
    let scanned: Vec<(&str, Option<&str>)> = analysis
        .scans
        .iter()
        .map(|scan| (scan.relation.as_str(), scan.alias.as_deref()))
        .collect();
    assert_eq!(
        scanned,
        vec![
            ("public.customers", Some("c")),
            ("public.orders", Some("orders")),
            ("public.orders", Some("orders_1")),
        ]
    );
    let found = &analysis.findings[0];
    assert_eq!(found.relation.as_deref(), Some("public.orders"));
    assert!(
        found
            .message
            .starts_with("Seq Scan on public.orders orders_1 reads 200,000 rows")
    );
    assert!(
        found
            .advice
            .ends_with("CREATE INDEX CONCURRENTLY ON public.orders (status);")
    );
}

#[test]
fn a_modify_table_node_is_not_a_scan() {
    let plan = r#"[{
      "Plan": {
        "Node Type": "ModifyTable",
        "Operation": "Update",
        "Parallel Aware": false,
        "Relation Name": "orders",
        "Alias": "orders",
        "Total Cost": 8.44,
        "Plan Rows": 0,
        "Plans": [
          {
            "Node Type": "Index Scan",
            "Parent Relationship": "Outer",
            "Parallel Aware": false,
            "Index Name": "orders_pkey",
            "Relation Name": "orders",
            "Alias": "orders",
            "Total Cost": 8.44,
            "Plan Rows": 1,
            "Index Cond": "(id = 42)"
          }
        ]
      }
    }]"#;
    let analysis = assert_kinds(plan, &[]);
    assert_eq!(analysis.scans.len(), 1);
    assert_eq!(analysis.scans[0].node_type, "Index Scan");
}

#[test]
fn a_node_with_only_its_type_is_analysed_without_panicking() {
    let analysis = analyse(r#"{"Plan": {"Node Type": "Result", "Plans": [{"Node Type": "Seq Scan"}]}}"#);
    assert_eq!(analysis.total_cost, 0.0);
    assert!(!analysis.analyzed);
    assert_eq!(analysis.execution_ms, None);
    assert!(analysis.scans.is_empty());
    assert!(analysis.findings.is_empty());
}

fn plan_error(text: &str) -> String {
    analyze_plan(&explain(text), &Thresholds::default())
        .expect_err("the plan is malformed")
        .to_string()
}

#[test]
fn malformed_explain_output_is_an_error_that_says_what_is_wrong() {
    assert_eq!(plan_error("[]"), "the EXPLAIN output is an empty array");
    assert_eq!(
        plan_error(r#""Seq Scan""#),
        "the EXPLAIN output is a string, expected the array or object EXPLAIN (FORMAT JSON) returns"
    );
    assert_eq!(
        plan_error("[42]"),
        "the EXPLAIN output is an array of a number, expected the array or object EXPLAIN (FORMAT \
         JSON) returns"
    );
    assert_eq!(
        plan_error(r#"[{"Planning Time": 0.1}]"#),
        "the plan has no \"Plan\" node"
    );
    assert_eq!(
        plan_error(r#"{"Plan": "Seq Scan"}"#),
        "a plan node is a string, expected an object"
    );
    assert_eq!(
        plan_error(r#"{"Plan": {"Total Cost": 1.0}}"#),
        "a plan node has no \"Node Type\""
    );
    assert_eq!(
        plan_error(r#"{"Plan": {"Node Type": "Seq Scan", "Plan Rows": "many"}}"#),
        "\"Plan Rows\" of the Seq Scan node is a string, expected a number"
    );
    assert_eq!(
        plan_error(r#"{"Plan": {"Node Type": "Hash Join", "Plans": {"Node Type": "Hash"}}}"#),
        "\"Plans\" of the Hash Join node is an object, expected an array"
    );
    assert_eq!(
        plan_error(r#"{"Plan": {"Node Type": "Hash Join", "Plans": [7]}}"#),
        "a plan node is a number, expected an object"
    );
    assert_eq!(
        plan_error(r#"{"Plan": {"Node Type": "Result"}, "Execution Time": "fast"}"#),
        "\"Execution Time\" of the EXPLAIN output is a string, expected a number"
    );
}

#[test]
fn a_plan_nested_beyond_any_real_plan_is_refused_without_overflowing_the_stack() {
    let mut node = serde_json::json!({"Node Type": "Result"});
    for _ in 0..(MAX_PLAN_DEPTH + 5) {
        node = serde_json::json!({"Node Type": "Result", "Plans": [node]});
    }
    let explain = serde_json::json!({ "Plan": node });
    assert_eq!(
        analyze_plan(&explain, &Thresholds::default()),
        Err(PlanError::TooDeep {
            max_depth: MAX_PLAN_DEPTH
        })
    );
}

#[test]
fn a_plan_as_deep_as_allowed_is_analysed() {
    let mut node = serde_json::json!({"Node Type": "Seq Scan", "Relation Name": "t"});
    for _ in 0..MAX_PLAN_DEPTH {
        node = serde_json::json!({"Node Type": "Materialize", "Plans": [node]});
    }
    let explain = serde_json::json!({ "Plan": node });
    let analysis = analyze_plan(&explain, &Thresholds::default()).expect("the plan analyses");
    assert_eq!(analysis.scans.len(), 1);
}

#[test]
fn findings_and_hints_serialize_their_kind_in_snake_case() {
    let analysis = analyse(SELECTIVE_SEQ_SCAN);
    let json = serde_json::to_value(&analysis).expect("the analysis serializes");
    assert_eq!(json["findings"][0]["kind"], "selective_seq_scan");
    assert_eq!(json["execution_ms"], 17.873);
    assert_eq!(
        serde_json::to_value(HintKind::LeadingWildcardLike).expect("the kind serializes"),
        "leading_wildcard_like"
    );
    assert_eq!(
        serde_json::to_value(FindingKind::SpillingHashAggregate).expect("the kind serializes"),
        "spilling_hash_aggregate"
    );
}

#[test]
fn thresholds_deserialize_with_defaults_for_missing_fields() {
    let thresholds: Thresholds =
        serde_json::from_str(r#"{"misestimate_factor": 4}"#).expect("the thresholds deserialize");
    assert_eq!(thresholds.misestimate_factor, 4.0);
    assert_eq!(
        thresholds.seq_scan_rows_min,
        Thresholds::default().seq_scan_rows_min
    );
}

// -- stale statistics ---------------------------------------------------

fn table(name: &str, live_rows: f64, modified_since_analyze: f64, last_analyzed: bool) -> TableStats {
    TableStats {
        table: name.to_owned(),
        live_rows,
        modified_since_analyze,
        last_analyzed,
    }
}

#[test]
fn a_table_modified_by_more_than_the_share_since_its_last_analyze_is_stale() {
    let found = stale_statistics(
        &[table("public.orders", 200_000.0, 90_000.0, true)],
        &Thresholds::default(),
    );
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].kind, FindingKind::StaleStatistics);
    assert_eq!(found[0].relation.as_deref(), Some("public.orders"));
    assert_eq!(
        found[0].message,
        "90,000 rows of public.orders were modified since its last ANALYZE, 45% of its 200,000 live \
         rows: the planner estimates from what the table looked like before"
    );
    assert!(found[0].advice.starts_with("ANALYZE public.orders;"));
}

#[test]
fn a_table_never_analyzed_is_stale() {
    let found = stale_statistics(
        &[table("public.events", 50_000.0, 50_000.0, false)],
        &Thresholds::default(),
    );
    assert_eq!(found.len(), 1);
    assert!(found[0].message.contains("has never been analysed"));
    assert!(found[0].advice.starts_with("ANALYZE public.events;"));
}

#[test]
fn fresh_and_small_tables_are_not_stale() {
    let tables = [
        table("public.orders", 200_000.0, 5_000.0, true),
        table("public.tiny", 40.0, 40.0, true),
        table("public.new_and_empty", 0.0, 0.0, false),
    ];
    assert!(stale_statistics(&tables, &Thresholds::default()).is_empty());
}

#[test]
fn a_table_name_that_needs_quotes_is_quoted_in_the_advice() {
    let found = stale_statistics(
        &[table("public.Order Items", 10_000.0, 9_000.0, true)],
        &Thresholds::default(),
    );
    assert!(found[0].advice.starts_with("ANALYZE public.\"Order Items\";"));
    let found = stale_statistics(
        &[table("public.user", 10_000.0, 9_000.0, true)],
        &Thresholds::default(),
    );
    assert!(found[0].advice.starts_with("ANALYZE public.\"user\";"));
}

// -- rewrite hints ------------------------------------------------------

#[test]
fn lower_on_an_indexed_column_suggests_an_expression_index() {
    let found = hints("SELECT id FROM users WHERE lower(email) = $1", &["users.email"]);
    assert_eq!(hint_kinds(&found), vec![HintKind::FunctionOnColumn]);
    assert_eq!(
        found[0].message,
        "`lower(email) = $1` applies lower() to the indexed column users.email, so an index on the \
         column cannot serve it"
    );
    assert!(
        found[0]
            .advice
            .contains("CREATE INDEX CONCURRENTLY ON users ((lower(email)));")
    );
    assert!(found[0].advice.contains("citext"));
}

#[test]
fn date_on_an_indexed_timestamp_suggests_a_range() {
    let found = hints(
        "SELECT * FROM orders o WHERE date(o.created_at) = $1",
        &["orders.created_at"],
    );
    assert_eq!(hint_kinds(&found), vec![HintKind::FunctionOnColumn]);
    assert!(
        found[0]
            .advice
            .contains("`o.created_at >= $1::date AND o.created_at < $1::date + 1`"),
        "{}",
        found[0].advice
    );
}

#[test]
fn date_trunc_and_extract_of_a_year_become_ranges_too() {
    let found = hints(
        "SELECT * FROM orders WHERE $1 = date_trunc('month', created_at)",
        &["orders.created_at"],
    );
    assert!(
        found[0]
            .advice
            .contains("`created_at >= $1 AND created_at < $1 + interval '1 month'`"),
        "{}",
        found[0].advice
    );
    let found = hints(
        "SELECT * FROM orders WHERE extract(year FROM created_at) > $1",
        &["orders.created_at"],
    );
    assert!(
        found[0]
            .advice
            .contains("`created_at >= make_date($1 + 1, 1, 1)`"),
        "{}",
        found[0].advice
    );
}

#[test]
fn a_function_on_a_column_without_an_index_gives_no_hint() {
    assert!(
        hints(
            "SELECT id FROM users WHERE lower(nickname) = $1",
            &["users.email"]
        )
        .is_empty()
    );
}

#[test]
fn a_cast_on_an_indexed_column_suggests_casting_the_other_side() {
    let found = hints("SELECT * FROM orders WHERE id::text = $1", &["orders.id"]);
    assert_eq!(hint_kinds(&found), vec![HintKind::CastOnColumn]);
    assert!(
        found[0]
            .message
            .contains("casts the indexed column orders.id to text")
    );
    assert!(
        found[0]
            .advice
            .contains("casting the other side (`id = $1::<type of id>`)")
    );
    assert!(
        found[0]
            .advice
            .contains("CREATE INDEX CONCURRENTLY ON orders ((id::TEXT));")
    );
    let found = hints(
        "SELECT * FROM orders WHERE CAST(created_at AS date) >= $1",
        &["orders.created_at"],
    );
    assert_eq!(hint_kinds(&found), vec![HintKind::CastOnColumn]);
    assert!(
        found[0].advice.contains("`created_at >= $1::date`"),
        "{}",
        found[0].advice
    );
}

#[test]
fn arithmetic_on_an_indexed_column_is_moved_to_the_other_side() {
    let found = hints(
        "SELECT * FROM orders WHERE created_at + interval '1 day' > now()",
        &["orders.created_at"],
    );
    assert_eq!(hint_kinds(&found), vec![HintKind::ArithmeticOnColumn]);
    assert_eq!(
        found[0].advice,
        "Move the arithmetic to the other side so the column stands alone: `created_at > now() - \
         INTERVAL '1 day'`."
    );
    let found = hints("SELECT * FROM orders WHERE $1 <= amount * 2", &["orders.amount"]);
    assert_eq!(hint_kinds(&found), vec![HintKind::ArithmeticOnColumn]);
    assert!(
        found[0]
            .advice
            .contains("CREATE INDEX CONCURRENTLY ON orders ((amount * 2));")
    );
}

#[test]
fn or_across_two_columns_is_flagged_whether_or_not_they_are_indexed() {
    let found = hints("SELECT * FROM users WHERE email = $1 OR phone = $2", &[]);
    assert_eq!(hint_kinds(&found), vec![HintKind::OrAcrossColumns]);
    assert!(found[0].message.contains("(users.email, users.phone)"));
    assert!(found[0].advice.contains("UNION"));
    assert!(found[0].advice.contains("BitmapOr"));
}

#[test]
fn or_on_one_column_is_not_flagged() {
    assert!(hints("SELECT * FROM users WHERE status = $1 OR status = $2", &[]).is_empty());
    assert!(
        hints(
            "SELECT * FROM t WHERE (a = $1 AND b = $2) OR (a = $3 AND b = $4)",
            &[]
        )
        .is_empty(),
        "the same column pair in every branch is served by one index"
    );
    assert!(
        hints("SELECT * FROM t WHERE (a = $1 AND b = $2) OR a = $3", &[]).is_empty(),
        "a column every branch tests is served by one index"
    );
}

#[test]
fn leading_wildcard_like_suggests_a_trigram_index() {
    let found = hints("SELECT * FROM users WHERE email LIKE '%@example.com'", &[]);
    assert_eq!(hint_kinds(&found), vec![HintKind::LeadingWildcardLike]);
    assert!(
        found[0]
            .advice
            .contains("CREATE INDEX CONCURRENTLY ON users USING gin (email gin_trgm_ops);")
    );
    let found = hints("SELECT * FROM users u WHERE u.name ILIKE '%' || $1 || '%'", &[]);
    assert_eq!(hint_kinds(&found), vec![HintKind::LeadingWildcardLike]);
    assert!(hints("SELECT * FROM users WHERE email LIKE 'admin%'", &[]).is_empty());
}

#[test]
fn not_in_a_subquery_suggests_not_exists() {
    let found = hints(
        "SELECT c.id FROM customers c WHERE c.id NOT IN (SELECT customer_id FROM orders WHERE status = $1)",
        &[],
    );
    assert_eq!(hint_kinds(&found), vec![HintKind::NotInSubquery]);
    assert!(
        found[0]
            .advice
            .contains("`NOT EXISTS (SELECT 1 FROM orders WHERE status = $1 AND customer_id = c.id)`"),
        "{}",
        found[0].advice
    );
    assert!(
        hints(
            "SELECT id FROM customers WHERE id IN (SELECT customer_id FROM orders)",
            &[]
        )
        .is_empty()
    );
}

#[test]
fn a_sargable_query_has_no_hints() {
    let indexed = ["users.email", "users.created_at", "users.id"];
    let sql = "SELECT id, email FROM users WHERE email = $1 AND created_at >= $2 AND id IN ($3, $4) \
               ORDER BY created_at DESC LIMIT $5";
    assert!(hints(sql, &indexed).is_empty());
}

#[test]
fn hints_are_found_in_joins_subqueries_ctes_updates_and_deletes() {
    let found = hints(
        "SELECT u.id FROM users u JOIN orders o ON o.user_id = u.id OR o.email = u.email \
         WHERE EXISTS (SELECT 1 FROM payments p WHERE p.reference LIKE '%x')",
        &[],
    );
    assert_eq!(
        hint_kinds(&found),
        vec![HintKind::OrAcrossColumns, HintKind::LeadingWildcardLike]
    );
    let found = hints(
        "WITH r AS (SELECT * FROM users WHERE lower(email) = $1) SELECT * FROM r",
        &["users.email"],
    );
    assert_eq!(hint_kinds(&found), vec![HintKind::FunctionOnColumn]);
    let found = hints("SELECT * FROM (SELECT * FROM users WHERE email LIKE '%a') t", &[]);
    assert_eq!(hint_kinds(&found), vec![HintKind::LeadingWildcardLike]);
    let found = hints(
        "UPDATE users SET active = false WHERE lower(email) = $1",
        &["users.email"],
    );
    assert_eq!(hint_kinds(&found), vec![HintKind::FunctionOnColumn]);
    let found = hints("DELETE FROM sessions WHERE token::text = $1", &["sessions.token"]);
    assert_eq!(hint_kinds(&found), vec![HintKind::CastOnColumn]);
}

#[test]
fn the_indexed_callback_gets_columns_with_their_aliases_resolved() {
    let asked = RefCell::new(Vec::new());
    let indexed = |column: &str| {
        asked.borrow_mut().push(column.to_owned());
        false
    };
    rewrite_hints(
        "SELECT 1 FROM public.users u JOIN orders o ON o.user_id = u.id \
         WHERE lower(u.email) = $1 AND upper(code) = $2 AND lower(\"Name\") = $3",
        &indexed,
    )
    .expect("the SQL parses");
    assert_eq!(*asked.borrow(), vec!["public.users.email", "code", "Name"]);
}

#[test]
fn a_repeated_predicate_gives_one_hint() {
    let found = hints(
        "SELECT * FROM users WHERE email LIKE '%a' UNION SELECT * FROM users WHERE email LIKE '%a'",
        &[],
    );
    assert_eq!(found.len(), 1);
}

#[test]
fn invalid_sql_is_an_error_with_the_parser_message() {
    let error = rewrite_hints("SELEC * FROM users", &|_| true).expect_err("the SQL is invalid");
    assert!(
        error
            .to_string()
            .starts_with("not valid SQL: Expected: an SQL statement"),
        "{error}"
    );
    assert_eq!(
        rewrite_hints("  -- nothing\n", &|_| true),
        Err(PlanError::NoStatement)
    );
}

fn or_chain(terms: usize) -> String {
    let mut sql = String::from("SELECT a FROM t WHERE a = $1");
    for term in 1..terms {
        sql.push_str(&format!(" OR b{term} LIKE '%x'"));
    }
    sql
}

#[test]
fn the_longest_or_chain_accepted_is_analysed_without_overflowing_the_stack() {
    let found = hints(&or_chain(MAX_OPERATORS + 1), &[]);
    assert_eq!(
        found.len(),
        MAX_OPERATORS + 1,
        "one OR hint and a LIKE hint per other column"
    );
}

#[test]
fn a_longer_or_chain_is_refused() {
    assert_eq!(
        rewrite_hints(&or_chain(MAX_OPERATORS + 2), &|_| true),
        Err(PlanError::TooManyOperators {
            found: MAX_OPERATORS + 1,
            max: MAX_OPERATORS
        })
    );
}

// -- helpers --------------------------------------------------------------

#[test]
fn counts_shares_and_sizes_are_written_for_people() {
    assert_eq!(format_count(28_780_000.0), "28,780,000");
    assert_eq!(format_count(999.4), "999");
    assert_eq!(format_count(-1234.0), "-1,234");
    assert_eq!(format_percent(0.001), "0.1%");
    assert_eq!(format_percent(0.45), "45%");
    assert_eq!(format_percent(0.99996), "99.9%");
    assert_eq!(format_percent(1.0), "100%");
    assert_eq!(format_percent(0.0000001), "<0.01%");
    assert_eq!(format_kb(87.0), "87 kB");
    assert_eq!(format_kb(7056.0), "6.9 MB");
    assert_eq!(suggested_work_mem(14_112.0), "16MB");
    assert_eq!(suggested_work_mem(3_000_000.0), "4GB");
    assert_eq!(suggested_work_mem(f64::INFINITY), "1048576GB");
}

#[test]
fn identifiers_are_quoted_only_when_postgresql_needs_it() {
    assert_eq!(quote_ident_if_needed("created_at"), "created_at");
    assert_eq!(quote_ident_if_needed("Name"), "\"Name\"");
    assert_eq!(quote_ident_if_needed("order"), "\"order\"");
    assert_eq!(quote_ident_if_needed("a\"b"), "\"a\"\"b\"");
    assert_eq!(quote_relation("public.orders"), "public.orders");
}
