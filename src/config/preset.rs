//! `--preset`: a framework's conventions as a set of flag values. A preset only supplies
//! values; any flag, environment variable or file key given for the same setting wins.
//!
//! The values are the flags' own text, so `walbox config check` prints what a preset expands
//! to as the flags a user could write instead, and every value goes through the same
//! validation as a typed flag.

/// The frameworks walbox has presets for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// DotNetCore.CAP: its published table, the cap.default.router exchange.
    Cap,
    /// MassTransit: its JSON envelope on a fanout exchange per message type.
    #[value(name = "masstransit")]
    MassTransit,
    /// NServiceBus: conventional routing topology, a fanout exchange per message type.
    #[value(name = "nservicebus")]
    NServiceBus,
    /// eShop's IntegrationEventLog on the eshop_event_bus direct exchange.
    Eshop,
    /// MASA's IntegrationEventLog as CloudEvents for Dapr pub/sub on RabbitMQ.
    Dapr,
    /// Any table, CloudEvents structured mode.
    #[value(name = "cloudevents")]
    CloudEvents,
}

/// A .NET type's exchange under NServiceBus's conventional routing: `type.Namespace + ":" +
/// type.Name` (a nested type gives `Ns:Inner`).
const NSERVICEBUS_EXCHANGE: &str = "{event_type|namespace}:{event_type|short}";

/// MassTransit's entity name for a message type: `Ns:Type`, a nested type `Ns:Outer-Inner`.
const MASSTRANSIT_EXCHANGE: &str = "{event_type|namespace}:{event_type|name|dash}";

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::Cap => "cap",
            Preset::MassTransit => "masstransit",
            Preset::NServiceBus => "nservicebus",
            Preset::Eshop => "eshop",
            Preset::Dapr => "dapr",
            Preset::CloudEvents => "cloudevents",
        }
    }

    /// The flag values (long name, value) this preset sets. `header` may appear more than once.
    pub fn values(self) -> &'static [(&'static str, &'static str)] {
        match self {
            // CAP's RabbitMQ transport: topic exchange `cap.default.router` (durable), routing
            // key = message name; its consumer needs the cap-msg-* headers it stored with the
            // message in Content.
            // CAP's PostgreSQL storage creates "published" in schema "cap" (its default).
            // Unroutable: dropped. CAP publishes with mandatory=false
            // (src/DotNetCore.CAP.RabbitMQ/ITransport.RabbitMQ.cs, BasicPublishAsync(_exchange,
            // message.GetName(), false, ...)), so the broker drops what no queue takes.
            Preset::Cap => &[
                ("table", "cap.published"),
                ("columns", "cap"),
                ("exchange", "cap.default.router"),
                ("exchange-kind", "topic"),
                ("exchange-durable", "true"),
                ("exchange-auto-delete", "false"),
                ("routing-key", "{event_type}"),
                ("body", "raw"),
                ("unroutable", "drop"),
            ],
            // Unroutable: dropped. MassTransit publishes with mandatory only when the sender
            // asks for it: `Mandatory` defaults to false (src/MassTransit/Contexts/Context/
            // MessageSendContext.cs) and is what RabbitMqSendTransportContext.cs passes to
            // BasicPublishAsync (src/Transports/MassTransit.RabbitMqTransport/RabbitMqTransport/).
            Preset::MassTransit => &[
                ("exchange", MASSTRANSIT_EXCHANGE),
                ("exchange-kind", "fanout"),
                ("exchange-durable", "true"),
                ("exchange-auto-delete", "false"),
                ("routing-key", ""),
                ("body", "masstransit"),
                ("unroutable", "drop"),
            ],
            // Unroutable: dropped. NServiceBus.RabbitMQ publishes events with mandatory=false
            // (src/NServiceBus.Transport.RabbitMQ/Routing/ConventionalRoutingTopology.cs,
            // Publish: BasicPublishAsync(exchangeNameConvention(type), string.Empty, false, ...));
            // only Send (commands to a queue) is mandatory.
            Preset::NServiceBus => &[
                ("exchange", NSERVICEBUS_EXCHANGE),
                ("exchange-kind", "fanout"),
                ("exchange-durable", "true"),
                ("exchange-auto-delete", "false"),
                ("routing-key", ""),
                ("body", "raw"),
                ("message-type", "{event_type}"),
                ("header", "NServiceBus.EnclosedMessageTypes={event_type}"),
                ("header", "NServiceBus.MessageId={id}"),
                ("header", "NServiceBus.ContentType=application/json"),
                ("header", "NServiceBus.MessageIntent=Publish"),
                ("unroutable", "drop"),
            ],
            // eShopOnContainers' EventBusRabbitMQ: direct exchange eshop_event_bus, declared
            // non-durable; routing key = the event's short type name; body = Content.
            // The entity's table is "IntegrationEventLog" in the DbContext's schema (public
            // unless the service sets another, e.g. Ordering's `ordering`).
            // Unroutable: dropped. eShop publishes with mandatory: true but registers no
            // basic.return handler and disposes the channel right after publishing
            // (src/EventBusRabbitMQ/RabbitMQEventBus.cs, PublishAsync): a returned event is
            // never seen, so in effect the broker drops it.
            Preset::Eshop => &[
                ("table", "public.IntegrationEventLog"),
                ("columns", "eshop"),
                ("exchange", "eshop_event_bus"),
                ("exchange-kind", "direct"),
                ("exchange-durable", "false"),
                ("exchange-auto-delete", "false"),
                ("routing-key", "{event_type|short}"),
                ("body", "raw"),
                ("unroutable", "drop"),
            ],
            // Dapr's RabbitMQ pub/sub: a fanout exchange per topic, declared durable and
            // auto-delete; CloudEvents structured JSON bodies (its subscriber does not read
            // binary mode). MASA keeps the topic in the event's own `Topic` property.
            // Unroutable: dropped. Dapr's component publishes with mandatory=false
            // (dapr/components-contrib pubsub/rabbitmq/rabbitmq.go, publishSync:
            // PublishWithDeferredConfirmWithContext(ctx, req.Topic, routingKey, false, false, p)).
            Preset::Dapr => &[
                ("table", "public.IntegrationEventLog"),
                ("columns", "masa"),
                ("exchange", "{payload->Topic}"),
                ("exchange-kind", "fanout"),
                ("exchange-durable", "true"),
                ("exchange-auto-delete", "true"),
                ("routing-key", ""),
                ("body", "cloudevents"),
                ("unroutable", "drop"),
            ],
            // Not a framework: walbox's own default (hold) stays.
            Preset::CloudEvents => &[("body", "cloudevents")],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn every_preset_has_its_name_and_values() {
        for preset in Preset::value_variants() {
            let parsed = Preset::from_str(preset.name(), false).unwrap();
            assert_eq!(parsed, *preset);
            assert!(!preset.values().is_empty());
        }
    }
}
