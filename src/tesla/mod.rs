//! Vehicle onboarding with Tesla: the partner key and signed telemetry configs ([`jws`]).
pub mod jws;
