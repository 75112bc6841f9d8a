//! The DynamoDB adapter (feature `dynamodb`): statelock's own lock format
//! ([`DynamoDbStore`]) and Terraform's ([`terraform`]).

mod locks;
pub mod terraform;

pub use locks::*;
