//! Routing: which route a reading belongs to, by source name and MQTT topic filter.
//!
//! Routes are tried in configuration order; the first whose source matches and whose topic
//! filter (if any) matches the reading's MQTT topic wins. A reading that matches none is a
//! `no-route` dead letter.

use std::sync::Arc;

use crate::config::{FilterError, RouteConfig, TopicFilter};
use crate::record::Origin;

/// A route, ready to match.
#[derive(Debug, Clone)]
pub struct Route {
    /// Display name.
    pub name: Arc<str>,
    /// Source name.
    pub source: String,
    /// Topic filter (MQTT only).
    pub filter: Option<TopicFilter>,
    /// Schema file name.
    pub schema: Arc<str>,
    /// Destination topic.
    pub kafka_topic: Arc<str>,
    /// Destination of its dead letters: `kafka_topic` + `dlq_suffix`.
    pub dlq_topic: Arc<str>,
    /// JSON Pointer to the partition key.
    pub key: Option<String>,
}

/// The ordered route table.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// Builds the table; filters must already have passed [`crate::config::Config::problems`].
    pub fn new(configs: &[RouteConfig], dlq_suffix: &str) -> Result<Self, FilterError> {
        let routes = configs
            .iter()
            .map(|c| {
                Ok(Route {
                    name: c.name().into(),
                    source: c.source.clone(),
                    filter: c
                        .topic_filter
                        .as_deref()
                        .map(TopicFilter::parse)
                        .transpose()?,
                    schema: c.schema.as_str().into(),
                    kafka_topic: c.kafka_topic.as_str().into(),
                    dlq_topic: format!("{}{dlq_suffix}", c.kafka_topic).into(),
                    key: c.key.clone().filter(|k| !k.is_empty()),
                })
            })
            .collect::<Result<_, FilterError>>()?;
        Ok(Self { routes })
    }

    /// The first route for a reading from `source` with this origin.
    pub fn find(&self, source: &str, origin: &Origin) -> Option<&Route> {
        self.routes.iter().find(|r| {
            r.source == source
                && match (&r.filter, origin) {
                    (None, _) => true,
                    (Some(filter), Origin::Mqtt { topic }) => filter.matches(topic),
                    (Some(_), Origin::Serial { .. } | Origin::Kafka { .. }) => false,
                }
        })
    }

    /// Every route.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_route_wins_and_sources_must_agree() {
        let route = |source: &str, filter: Option<&str>, topic: &str| RouteConfig {
            name: None,
            source: source.into(),
            topic_filter: filter.map(Into::into),
            schema: "s.json".into(),
            kafka_topic: topic.into(),
            key: None,
        };
        let router = Router::new(
            &[
                route("a", Some("x/special"), "special"),
                route("a", Some("x/+"), "general"),
                route("serial", None, "serial"),
            ],
            ".DLQ",
        )
        .unwrap();
        let mqtt = |t: &str| Origin::Mqtt { topic: t.into() };
        assert_eq!(
            &*router.find("a", &mqtt("x/special")).unwrap().kafka_topic,
            "special"
        );
        assert_eq!(
            &*router.find("a", &mqtt("x/other")).unwrap().kafka_topic,
            "general"
        );
        assert!(router.find("b", &mqtt("x/other")).is_none());
        assert!(router.find("a", &mqtt("y/other")).is_none());
        let port = Origin::Serial {
            port: "/dev/ttyUSB0".into(),
        };
        assert_eq!(
            &*router.find("serial", &port).unwrap().kafka_topic,
            "serial"
        );
    }
}
