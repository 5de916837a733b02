//! `walbox setup`: check the server, create what is missing, declare the exchange, and say
//! from where events will be captured. Safe to run again.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::backfill::{self, Phase};
use crate::config::DeclareMode;
use crate::config::{BackfillConfig, Config, StreamTarget};
use crate::control::publication::Names;
use crate::control::{Control, Ensured, Prepared, SlotCreation};
use crate::error::{Error, Result};
use crate::publish::Publisher;
use crate::publish::nodes;
use crate::publish::stream;
use crate::publish::target::Target;

pub(crate) async fn setup(config: &Config, backfill: Option<&BackfillConfig>) -> Result<()> {
    let control = Control::connect(config).await?;
    let names = Names {
        publication: &config.publication,
        table: &config.table,
    };
    // Before the checks (the cut-over's too), so that a publication made without it passes.
    let via_root = control.ensure_via_root(names).await?;
    cut_over(config, backfill).await?;
    let prepared = control.prepare(config, SlotCreation::Always).await?;
    println!(
        "wal_level is logical; table {} has every mapped column ({})",
        config.table, config.mapping.columns
    );
    print_publication(config, prepared.publication, via_root);
    print_slot(config, &prepared);
    super::failover::explain(&control, config, &prepared.slot_info).await?;
    if let Some(target) = &config.stream {
        return declare_stream(target).await;
    }
    let publisher = Target::connect_amqp(config, None).await?;
    publisher.close().await;
    let node = nodes::current(&config.amqp_url);
    print_alternate_exchange(config);
    print_exchange(config, &node);
    Ok(())
}

fn print_publication(config: &Config, publication: Ensured, via_root: bool) {
    println!(
        "publication {}: {}",
        config.publication,
        match publication {
            Ensured::Created => format!(
                "created for {} (inserts only, partitions' rows as the table's)",
                config.table
            ),
            Ensured::Existed if via_root => format!(
                "already exists and includes the table; publish_via_partition_root turned on, \
                 so the rows of {}'s partitions are published as its own",
                config.table
            ),
            Ensured::Existed => "already exists and includes the table".to_owned(),
        }
    );
}

/// The slot, and from where events will be relayed.
fn print_slot(config: &Config, prepared: &Prepared) {
    let from = prepared
        .slot_info
        .confirmed_flush_lsn
        .as_deref()
        .unwrap_or("?");
    match prepared.slot {
        Ensured::Created => println!(
            "replication slot {}: created (pgoutput); events committed after {from} will be relayed",
            config.slot
        ),
        Ensured::Existed => println!(
            "replication slot {}: already exists; relaying resumes from {from}",
            config.slot
        ),
    }
}

/// `--target stream`: declare the stream unless told not to, and say what happened.
async fn declare_stream(target: &StreamTarget) -> Result<()> {
    let nodes: Vec<String> = target.nodes.iter().map(ToString::to_string).collect();
    if !target.declare {
        println!(
            "stream {}: not declared (--stream-declare none); nodes {}",
            target.stream,
            nodes.join(",")
        );
    } else if stream::declare(target).await? {
        println!("stream {}: created at {}", target.stream, nodes.join(","));
    } else {
        println!(
            "stream {}: already exists at {}",
            target.stream,
            nodes.join(",")
        );
    }
    Ok(())
}

fn print_alternate_exchange(config: &Config) {
    let Some(alternate) = config.unroutable.alternate_exchange() else {
        return;
    };
    match config.exchange_spec.mode {
        DeclareMode::Declare => println!(
            "alternate exchange {alternate}: declared (fanout, durable) with queue \
             {alternate} bound, for events no queue takes"
        ),
        DeclareMode::Passive => {
            println!("alternate exchange {alternate}: exists (passive check)")
        }
        DeclareMode::None => println!(
            "alternate exchange {alternate}: not declared (--exchange-declare none); the \
             exchanges need it set by a policy"
        ),
    }
}

/// The exchange events go to (one, or one per event from a template) at broker `node`.
fn print_exchange(config: &Config, node: &str) {
    let mapping = &config.mapping;
    let spec = config.exchange_spec;
    match (mapping.exchange.as_constant(), spec.mode) {
        (Some(""), _) => println!(
            "exchange: the default exchange (routing key = queue name) at {}",
            node
        ),
        (Some(name), DeclareMode::Declare) => {
            println!("exchange {name}: declared ({spec}) at {}", node)
        }
        (Some(name), DeclareMode::Passive) => {
            println!("exchange {name}: exists (passive check) at {}", node)
        }
        (Some(name), DeclareMode::None) => println!(
            "exchange {name}: not declared (--exchange-declare none); broker reachable at {}",
            node
        ),
        (None, mode) => println!(
            "exchange per event, {}: each is {} ({spec}) before its first event; broker \
             reachable at {}",
            mapping.exchange,
            match mode {
                DeclareMode::Declare => "declared",
                DeclareMode::Passive => "checked to exist",
                DeclareMode::None => "not declared",
            },
            node
        ),
    }
}

/// With `--backfill`, the cut-over: create the slot and send the rows it owes before setup
/// returns (and an unfinished backfill is finished, flags or not). SIGTERM/SIGINT stop it;
/// the next start resumes it.
async fn cut_over(config: &Config, asked: Option<&BackfillConfig>) -> Result<()> {
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let mut terminate = signal(SignalKind::terminate()).map_err(Error::definite)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(Error::definite)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        let _ = stop_tx.send(true);
    });
    let telemetry = Arc::new(crate::telemetry::Telemetry::default());
    let grace = Duration::from_secs(10);
    let phase = backfill::cut_over(
        config,
        asked,
        SlotCreation::Always,
        grace,
        &mut stop_rx,
        &telemetry,
    )
    .await?;
    if phase == Phase::Stopped {
        return Err(Error::definite(
            "interrupted during the backfill; `walbox run` (or setup) resumes it",
        ));
    }
    Ok(())
}
