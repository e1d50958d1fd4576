BEGIN TRANSACTION;
CREATE TABLE alembic_version (
	version_num VARCHAR(32) NOT NULL, 
	CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);
INSERT INTO "alembic_version" VALUES('0011_event_keyset');
CREATE TABLE api_token (
	id INTEGER NOT NULL, 
	user_id INTEGER NOT NULL, 
	name VARCHAR(100) NOT NULL, 
	token_hash VARCHAR(64) NOT NULL, 
	prefix VARCHAR(12) NOT NULL, 
	created_at DATETIME, 
	last_used DATETIME, 
	revoked_at DATETIME, role VARCHAR(10) DEFAULT 'admin' NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(user_id) REFERENCES app_user (id), 
	UNIQUE (token_hash)
);
CREATE TABLE app_user (
	id INTEGER NOT NULL, 
	username VARCHAR(100) NOT NULL, 
	password_hash VARCHAR(255) NOT NULL, 
	created_at DATETIME, 
	last_login DATETIME, 
	failed_logins INTEGER NOT NULL, 
	locked_until DATETIME, unlock_hash VARCHAR(64), unlock_until DATETIME, 
	PRIMARY KEY (id), 
	UNIQUE (username)
);
CREATE TABLE config_change (
	id INTEGER NOT NULL, 
	timestamp DATETIME NOT NULL, 
	actor VARCHAR(200) NOT NULL, 
	action VARCHAR(50) NOT NULL, 
	target_kind VARCHAR(20), 
	target_id INTEGER, 
	target_key VARCHAR(100), 
	summary TEXT NOT NULL, 
	"before" TEXT, 
	"after" TEXT, 
	PRIMARY KEY (id)
);
CREATE TABLE decision (
	id INTEGER NOT NULL, 
	timestamp DATETIME NOT NULL, 
	input_device_id INTEGER, 
	input_key VARCHAR(100) NOT NULL, 
	input_label VARCHAR(100), 
	origin VARCHAR(100), 
	event_detail VARCHAR(255), 
	fired BOOLEAN NOT NULL, 
	reason VARCHAR(50), 
	detail TEXT, 
	PRIMARY KEY (id)
);
CREATE TABLE decision_output (
	id INTEGER NOT NULL, 
	decision_id INTEGER NOT NULL, 
	output_device_id INTEGER, 
	output_key VARCHAR(100) NOT NULL, 
	output_label VARCHAR(100), 
	fired BOOLEAN NOT NULL, 
	reason VARCHAR(50), 
	detail TEXT, 
	PRIMARY KEY (id), 
	FOREIGN KEY(decision_id) REFERENCES decision (id) ON DELETE CASCADE
);
CREATE TABLE event_log (
	id INTEGER NOT NULL, 
	input_device VARCHAR(100), 
	output_device VARCHAR(100), 
	timestamp DATETIME, decision_id INTEGER, 
	PRIMARY KEY (id)
);
CREATE TABLE general_config (
	id INTEGER NOT NULL, 
	config_key VARCHAR(50) NOT NULL, 
	config_value TEXT NOT NULL, 
	PRIMARY KEY (id)
);
CREATE TABLE heartbeat (
	id INTEGER NOT NULL, 
	dt DATETIME, 
	ts FLOAT, 
	PRIMARY KEY (id)
);
CREATE TABLE hub_node (
	id INTEGER NOT NULL, 
	node_name VARCHAR(64) NOT NULL, 
	role VARCHAR(16) NOT NULL, 
	role_since DATETIME, 
	seen DATETIME, 
	url VARCHAR(255), 
	PRIMARY KEY (id), 
	UNIQUE (node_name)
);
CREATE TABLE input_config (
	id INTEGER NOT NULL, 
	device_key VARCHAR(50) NOT NULL, 
	device_type VARCHAR(100) NOT NULL, 
	device_label VARCHAR(100), 
	customized BOOLEAN, 
	activation_interval INTEGER, 
	auto_schedule BOOLEAN, 
	auto_schedule_enable VARCHAR(5), 
	auto_schedule_disable VARCHAR(5), 
	device_enabled BOOLEAN, 
	multi_trigger BOOLEAN, 
	group_name VARCHAR(100), 
	info_notify BOOLEAN, location VARCHAR(100), origin VARCHAR(100), label_customized BOOLEAN, multi_trigger_rate INTEGER, multi_trigger_interval INTEGER, last_seen DATETIME, created_at DATETIME, alert_offline BOOLEAN, auto_schedule_tz VARCHAR(64), 
	PRIMARY KEY (id)
);
CREATE TABLE input_link (
	id INTEGER NOT NULL, 
	input_device_id INTEGER NOT NULL, 
	linked_device_id INTEGER NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT unique_link UNIQUE (input_device_id, linked_device_id), 
	FOREIGN KEY(input_device_id) REFERENCES input_config (id)
);
CREATE TABLE "meter_config" (
	id INTEGER NOT NULL, 
	input_device_id INTEGER NOT NULL, 
	meter_value INTEGER NOT NULL, 
	register_value INTEGER NOT NULL, 
	meter_reading VARCHAR NOT NULL, 
	meter_iot_topic VARCHAR(100) NOT NULL, 
	meter_low_limit FLOAT, 
	meter_high_limit FLOAT, 
	meter_reset_value INTEGER, 
	meter_reset_additive BOOLEAN, 
	meter_reading_unit VARCHAR(10), 
	meter_reading_unit_factor INTEGER, 
	meter_reading_unit_precision INTEGER, 
	PRIMARY KEY (id), 
	FOREIGN KEY(input_device_id) REFERENCES input_config (id)
);
CREATE TABLE meter_history (
	id INTEGER NOT NULL, 
	input_device_id INTEGER NOT NULL, 
	timestamp DATETIME NOT NULL, 
	register_value INTEGER, 
	meter_value INTEGER, 
	reading FLOAT, 
	PRIMARY KEY (id)
);
CREATE TABLE output_config (
	id INTEGER NOT NULL, 
	device_key VARCHAR(50) NOT NULL, 
	device_type VARCHAR(100) NOT NULL, 
	device_label VARCHAR(100), 
	device_params TEXT, device_enabled BOOLEAN, trigger_topic VARCHAR(255), trigger_interval INTEGER, location VARCHAR(100), origin VARCHAR(100), label_customized BOOLEAN, last_seen DATETIME, created_at DATETIME, alert_offline BOOLEAN, auto_schedule BOOLEAN, auto_schedule_enable VARCHAR(5), auto_schedule_disable VARCHAR(5), generation VARCHAR(10), generation_device VARCHAR(100), generation_override VARCHAR(10), auto_schedule_tz VARCHAR(64), pulse_seconds INTEGER, 
	PRIMARY KEY (id)
);
CREATE TABLE "output_link" (
	id INTEGER NOT NULL, 
	input_device_id INTEGER NOT NULL, 
	output_device_id INTEGER NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT unique_output_link UNIQUE (input_device_id, output_device_id), 
	FOREIGN KEY(input_device_id) REFERENCES input_config (id), 
	FOREIGN KEY(output_device_id) REFERENCES output_config (id)
);
CREATE TABLE rule_state (
	id INTEGER NOT NULL, 
	state_key VARCHAR(200) NOT NULL, 
	state_value TEXT NOT NULL, 
	updated DATETIME, 
	PRIMARY KEY (id), 
	UNIQUE (state_key)
);
CREATE TABLE web_session (
	id INTEGER NOT NULL, 
	user_id INTEGER NOT NULL, 
	key_hash VARCHAR(64) NOT NULL, 
	created_at DATETIME, 
	address VARCHAR(64), 
	PRIMARY KEY (id), 
	FOREIGN KEY(user_id) REFERENCES app_user (id), 
	UNIQUE (key_hash)
);
CREATE INDEX ix_event_log_output_device ON event_log (output_device);
CREATE INDEX ix_event_log_input_device ON event_log (input_device);
CREATE INDEX ix_event_log_timestamp ON event_log (timestamp);
CREATE UNIQUE INDEX ix_input_config_device_key ON input_config (device_key);
CREATE INDEX ix_input_config_group_name ON input_config (group_name);
CREATE UNIQUE INDEX ix_output_config_device_key ON output_config (device_key);
CREATE INDEX ix_input_link_input_device_id ON input_link (input_device_id);
CREATE INDEX ix_decision_input_device_id ON decision (input_device_id);
CREATE INDEX ix_decision_output_decision_id ON decision_output (decision_id);
CREATE INDEX ix_decision_output_output_device_id ON decision_output (output_device_id);
CREATE INDEX ix_output_link_input_device_id ON output_link (input_device_id);
CREATE INDEX ix_api_token_user_id ON api_token (user_id);
CREATE INDEX ix_meter_history_input_time ON meter_history (input_device_id, timestamp);
CREATE INDEX ix_config_change_target ON config_change (target_kind, target_id, timestamp);
CREATE INDEX ix_meter_config_input_device_id ON meter_config (input_device_id);
CREATE INDEX ix_web_session_user_id ON web_session (user_id);
CREATE INDEX ix_decision_time_id ON decision (timestamp, id);
CREATE INDEX ix_decision_input_time_id ON decision (input_device_id, timestamp, id);
CREATE INDEX ix_decision_key_time_id ON decision (input_key, timestamp, id);
CREATE INDEX ix_decision_output_output_key ON decision_output (output_key);
CREATE INDEX ix_config_change_time_id ON config_change (timestamp, id);
CREATE INDEX ix_config_change_key_time_id ON config_change (target_key, timestamp, id);
CREATE INDEX ix_event_log_decision_time_id ON event_log (decision_id, timestamp, id);
CREATE INDEX ix_event_log_original_input ON event_log (input_device, timestamp, id) WHERE decision_id IS NULL;
CREATE INDEX ix_event_log_original_output ON event_log (output_device, timestamp, id) WHERE decision_id IS NULL;
COMMIT;
