//! `walbox setup`: check the server, create what is missing, declare the exchange, and say
//! from where events will be captured. Safe to run again.

use crate::config::Config;
use crate::control::{Control, Ensured};
use crate::error::Result;
use crate::sink::Publisher;
use crate::sink::amqp::AmqpPublisher;

pub(crate) async fn setup(config: &Config) -> Result<()> {
    let control = Control::connect(config).await?;
    let prepared = control.prepare(config, true).await?;
    println!(
        "wal_level is logical; table {} has every mapped column ({})",
        config.table, config.columns
    );
    println!(
        "publication {}: {}",
        config.publication,
        match prepared.publication {
            Ensured::Created => format!("created for {} (inserts only)", config.table),
            Ensured::Existed => "already exists and includes the table".to_owned(),
        }
    );
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
    let publisher = AmqpPublisher::connect(config).await?;
    publisher.close().await;
    if config.declare_exchange {
        println!(
            "exchange {}: declared (durable topic) at {}",
            config.exchange, config.amqp_url
        );
    } else {
        println!(
            "exchange {}: not declared (--no-declare); broker reachable at {}",
            config.exchange, config.amqp_url
        );
    }
    Ok(())
}
