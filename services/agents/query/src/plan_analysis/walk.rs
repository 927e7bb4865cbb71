//! The walk over the plan tree: every node, InitPlans and SubPlans included, with its context.

use std::collections::HashMap;

use super::*;

pub(super) struct PlanWalk<'a> {
    pub(super) thresholds: &'a Thresholds,
    pub(super) table_rows: &'a HashMap<String, f64>,
    pub(super) analyzed: bool,
    pub(super) scans: Vec<RelationScan>,
    pub(super) findings: Vec<PlanFinding>,
}

/// What a node's ancestors tell about it.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct NodeContext {
    /// An ancestor may stop reading this node before it is exhausted (a
    /// Limit, a merge join, the inner side of a semi or anti join, an EXISTS
    /// subplan), so fewer actual rows than estimated prove nothing.
    pub(super) may_stop_early: bool,
    /// Workers planned by the Gather the node runs under, if any.
    pub(super) parallel_workers: Option<f64>,
}

impl PlanWalk<'_> {
    pub(super) fn visit(&mut self, node: &PlanNode, context: NodeContext) {
        self.inspect(node, context);
        for (position, child) in node.children.iter().enumerate() {
            self.visit(child, child_context(node, position, child, context));
        }
    }

    /// The node's own scan and findings, in a function of its own so that
    /// its large frame is gone before the recursion into the children.
    pub(super) fn inspect(&mut self, node: &PlanNode, context: NodeContext) {
        if let Some(scan) = relation_scan(node) {
            self.scans.push(scan);
        }
        let findings = [
            selective_seq_scan(node, context, self.thresholds, self.table_rows),
            index_filter_discards_rows(node, self.thresholds),
            spilling_sort(node),
            spilling_hash(node),
            spilling_hash_aggregate(node),
            lossy_bitmap_scan(node),
            large_nested_loop(node, self.analyzed, self.thresholds),
            misestimate(node, context, self.thresholds),
        ];
        self.findings.extend(findings.into_iter().flatten());
    }
}

pub(super) fn child_context(
    parent: &PlanNode,
    position: usize,
    child: &PlanNode,
    context: NodeContext,
) -> NodeContext {
    let may_stop_early = if is_subplan(child) {
        // An EXISTS or ANY subplan stops at its first match; whether this one
        // does is not in the plan, so assume it may.
        true
    } else if consumes_all_input(parent) {
        false
    } else {
        context.may_stop_early || stops_reading_child_early(parent, position, child)
    };
    let parallel_workers = if matches!(parent.node_type.as_str(), "Gather" | "Gather Merge") {
        parent.workers_planned
    } else {
        context.parallel_workers
    };
    NodeContext {
        may_stop_early,
        parallel_workers,
    }
}

pub(super) fn is_subplan(node: &PlanNode) -> bool {
    matches!(node.parent_relationship.as_deref(), Some("InitPlan" | "SubPlan"))
}

/// Nodes that read their whole input before returning a row: below them a
/// Limit above no longer cuts anything short.
pub(super) fn consumes_all_input(node: &PlanNode) -> bool {
    match node.node_type.as_str() {
        "Sort" | "Hash" => true,
        "Aggregate" => matches!(node.strategy.as_deref(), Some("Hashed" | "Plain")),
        _ => false,
    }
}

pub(super) fn stops_reading_child_early(parent: &PlanNode, position: usize, child: &PlanNode) -> bool {
    match parent.node_type.as_str() {
        "Limit" | "Merge Join" => true,
        "Nested Loop" => {
            matches!(parent.join_type.as_deref(), Some("Semi" | "Anti")) && is_inner_side(position, child)
        }
        _ => false,
    }
}

pub(super) fn is_inner_side(position: usize, child: &PlanNode) -> bool {
    match child.parent_relationship.as_deref() {
        Some(relationship) => relationship == "Inner",
        None => position == 1,
    }
}

/// The children that feed the node's rows (not its InitPlans and SubPlans).
pub(super) fn row_sources(node: &PlanNode) -> impl Iterator<Item = &PlanNode> {
    node.children.iter().filter(|child| !is_subplan(child))
}

/// The outer and inner side of a join node.
pub(super) fn join_sides(node: &PlanNode) -> Option<(&PlanNode, &PlanNode)> {
    let sources: Vec<&PlanNode> = row_sources(node).collect();
    let outer = sources
        .iter()
        .find(|child| child.parent_relationship.as_deref() == Some("Outer"))
        .or_else(|| sources.first())?;
    let inner = sources
        .iter()
        .find(|child| child.parent_relationship.as_deref() == Some("Inner"))
        .or_else(|| sources.get(1))?;
    Some((outer, inner))
}

/// The tables read below a node (InitPlans and SubPlans excluded), in plan
/// order, each once.
pub(super) fn relations_beneath(node: &PlanNode) -> Vec<String> {
    let mut relations = Vec::new();
    collect_relations(node, &mut relations);
    relations
}

pub(super) fn collect_relations(node: &PlanNode, relations: &mut Vec<String>) {
    if let Some(relation) = &node.relation
        && node.node_type != "ModifyTable"
        && !relations.contains(relation)
    {
        relations.push(relation.clone());
    }
    for child in row_sources(node) {
        collect_relations(child, relations);
    }
}

/// The one table a node's rows come from, when there is exactly one.
pub(super) fn sole_relation_beneath(node: &PlanNode) -> Option<String> {
    let mut relations = relations_beneath(node);
    if relations.len() == 1 {
        relations.pop()
    } else {
        None
    }
}

pub(super) fn relation_scan(node: &PlanNode) -> Option<RelationScan> {
    let relation = node.relation.clone()?;
    if node.node_type == "ModifyTable" {
        return None;
    }
    Some(RelationScan {
        relation,
        alias: node.alias.clone(),
        node_type: node.node_type.clone(),
        index_name: node.index_name.clone().or_else(|| bitmap_index_names(node)),
        filter: node.filter.clone(),
        index_cond: node.index_cond.clone().or_else(|| node.recheck_cond.clone()),
        estimated_rows: node.plan_rows.unwrap_or(0.0),
        actual_rows: over_all_loops(node.actual_rows, node.actual_loops),
        loops: node.actual_loops,
        rows_removed_by_filter: over_all_loops(node.rows_removed_by_filter, node.actual_loops),
        total_cost: node.total_cost.unwrap_or(0.0),
    })
}

/// A per-loop count (as PostgreSQL prints them) over all loops.
pub(super) fn over_all_loops(per_loop: Option<f64>, loops: Option<f64>) -> Option<f64> {
    Some(per_loop? * loops.unwrap_or(1.0))
}

/// The indexes a Bitmap Heap Scan reads through its Bitmap Index Scans
/// (several below a BitmapAnd or BitmapOr).
pub(super) fn bitmap_index_names(node: &PlanNode) -> Option<String> {
    if node.node_type != "Bitmap Heap Scan" {
        return None;
    }
    let mut names = Vec::new();
    collect_bitmap_index_names(node, &mut names);
    (!names.is_empty()).then(|| names.join(", "))
}

pub(super) fn collect_bitmap_index_names(node: &PlanNode, names: &mut Vec<String>) {
    for child in row_sources(node) {
        if child.node_type == "Bitmap Index Scan"
            && let Some(name) = &child.index_name
        {
            names.push(name.clone());
        }
        if matches!(child.node_type.as_str(), "BitmapAnd" | "BitmapOr") {
            collect_bitmap_index_names(child, names);
        }
    }
}

/// "Seq Scan on orders", "Index Scan using orders_pkey on orders", "Hash Join".
pub(super) fn describe_node(node: &PlanNode) -> String {
    let mut text = node.node_type.clone();
    if let Some(index) = &node.index_name {
        text.push_str(&format!(" using {index}"));
    }
    if let Some(relation) = &node.relation {
        text.push_str(&format!(" on {relation}"));
        if let Some(alias) = node
            .alias
            .as_deref()
            .filter(|alias| !relation_ends_with(relation, alias))
        {
            text.push_str(&format!(" {alias}"));
        }
    }
    text
}

pub(super) fn relation_ends_with(relation: &str, name: &str) -> bool {
    relation == name || relation.ends_with(&format!(".{name}"))
}
