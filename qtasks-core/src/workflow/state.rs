//! What the backend keeps of a workflow: its steps as a tree, and where each task is in it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// One part of a workflow: a task, steps one after another, or members side by side.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Node {
    /// A task; its result is the node's.
    Task(Step),
    /// Steps one after another, each given the one before's result as its last argument; the
    /// last one's result is the chain's.
    Chain { steps: Vec<Node> },
    /// Members side by side, each given the group's input; the list of their results, in
    /// order, is the group's.
    Group { members: Vec<Node> },
}

/// A task of a workflow, as it is added: the arguments before its input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Step {
    pub(crate) uuid: Uuid,
    pub(crate) task_name: String,
    pub(crate) args: Vec<Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub(crate) kwargs: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) priority: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rate_key: Option<String>,
}

/// A workflow as stored (the state's `doc` field).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Doc {
    pub(crate) root: Node,
    /// Added once, with the [`StepFailure`](super::StepFailure) as its last argument, when a
    /// step fails for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) on_error: Option<Step>,
}

impl Node {
    /// The node at `path` (indexes from the root), if there is one.
    pub(crate) fn at(&self, path: &[usize]) -> Option<&Node> {
        let Some((first, rest)) = path.split_first() else {
            return Some(self);
        };
        match self {
            Node::Task(_) => None,
            Node::Chain { steps: nodes } | Node::Group { members: nodes } => {
                nodes.get(*first)?.at(rest)
            }
        }
    }

    /// Every task of the tree with its path, in order.
    pub(crate) fn tasks(&self) -> Vec<(Vec<usize>, &Step)> {
        fn walk<'a>(node: &'a Node, path: &mut Vec<usize>, out: &mut Vec<(Vec<usize>, &'a Step)>) {
            match node {
                Node::Task(step) => out.push((path.clone(), step)),
                Node::Chain { steps: nodes } | Node::Group { members: nodes } => {
                    for (i, child) in nodes.iter().enumerate() {
                        path.push(i);
                        walk(child, path, out);
                        path.pop();
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(self, &mut Vec::new(), &mut out);
        out
    }

    /// Gives every task a new id (a flow added twice is two workflows).
    pub(crate) fn assign_ids(&mut self) {
        match self {
            Node::Task(step) => {
                if step.uuid.is_nil() {
                    step.uuid = Uuid::new_v4();
                }
            }
            Node::Chain { steps: nodes } | Node::Group { members: nodes } => {
                nodes.iter_mut().for_each(Node::assign_ids);
            }
        }
    }
}

/// A path written `0.2.1` (the root is empty).
pub(crate) fn path_text(path: &[usize]) -> String {
    let parts: Vec<String> = path.iter().map(usize::to_string).collect();
    parts.join(".")
}

/// Reads a path written by [`path_text`].
pub(crate) fn parse_path(text: &str) -> Option<Vec<usize>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split('.').map(|part| part.parse().ok()).collect()
}

/// A task's place in a workflow, as its `workflow` field says it: `{id}/{path}`.
pub(crate) fn step_ref(id: Uuid, path: &[usize]) -> String {
    format!("{id}/{}", path_text(path))
}

/// Reads a task's `workflow` field.
pub(crate) fn parse_step_ref(text: &str) -> Option<(Uuid, Vec<usize>)> {
    let (id, path) = text.split_once('/')?;
    Some((Uuid::parse_str(id).ok()?, parse_path(path)?))
}

/// The state field that holds the result of the node at `path`.
pub(crate) fn result_field(path: &[usize]) -> String {
    format!("r:{}", path_text(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str) -> Node {
        Node::Task(Step {
            uuid: Uuid::nil(),
            task_name: name.to_owned(),
            args: Vec::new(),
            kwargs: Map::new(),
            priority: None,
            queue: None,
            rate_key: None,
        })
    }

    #[test]
    fn paths_find_nodes_and_round_trip() {
        let tree = Node::Chain {
            steps: vec![
                task("a"),
                Node::Group {
                    members: vec![
                        task("b"),
                        Node::Chain {
                            steps: vec![task("c"), task("d")],
                        },
                    ],
                },
            ],
        };
        let names: Vec<(String, &str)> = tree
            .tasks()
            .into_iter()
            .map(|(path, step)| (path_text(&path), step.task_name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("0".into(), "a"),
                ("1.0".into(), "b"),
                ("1.1.0".into(), "c"),
                ("1.1.1".into(), "d")
            ]
        );
        assert!(matches!(tree.at(&[1, 1, 1]), Some(Node::Task(s)) if s.task_name == "d"));
        assert!(tree.at(&[2]).is_none() && tree.at(&[0, 0]).is_none());
        let id = Uuid::new_v4();
        assert_eq!(
            parse_step_ref(&step_ref(id, &[1, 1, 0])),
            Some((id, vec![1, 1, 0]))
        );
        assert_eq!(parse_step_ref(&step_ref(id, &[])), Some((id, vec![])));
        assert_eq!(parse_step_ref("nonsense"), None);
        assert_eq!(parse_path("1.x"), None);
    }
}
