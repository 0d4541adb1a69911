-- Sample SEMODEL.db content (data only; the tables are defined once in fepha/semodel/schema.sql and
-- documented in docs/semodel.md). Build the database with:  sysload build   (writes $FEPROOT/db/SEMODEL.db)
--
-- Two Modbus TCP acquisition RTUs (a substation and a pump station) and one IEC 104 acquisition RTU
-- (a substation RTU reporting spontaneously), each reachable on two channels; one forwarding RTU for each
-- protocol (se104s, modbus_trains, sefeps); a virtual point for each acquisition RTU's link.
-- Addresses fit the one-machine demo: node A is 127.0.0.1, node B 127.0.0.2, the simulated PLCs listen
-- on 127.0.0.1 (channel 1) and 127.0.0.3 (channel 2).

INSERT INTO T020_UNION (ID, IP1, IP2) VALUES (1, '127.0.0.1', '127.0.0.2');

-- RTUID, NAME, RTUTYPE, PROTOCOL, POLLMS, TIMEOUTMS, LISTENPORT, ADDRESS, ALLOW, INFLIGHT
INSERT INTO T004_RTU VALUES (1, 'Substation North', 0, 'modbus_tcp', 500, 1000, NULL, NULL, NULL, NULL);
INSERT INTO T004_RTU VALUES (2, 'Pump Station 7',   0, 'modbus_tcp', 1000, 1000, NULL, NULL, NULL, NULL);
INSERT INTO T004_RTU VALUES (10, 'SCADA IEC 104',   2, 'se104s',        NULL, NULL, 2404, 1, NULL, NULL);
INSERT INTO T004_RTU VALUES (11, 'Train Modbus',    2, 'modbus_trains', NULL, NULL, 1502, 1, NULL, NULL);
INSERT INTO T004_RTU VALUES (12, 'SCADA sefeps',    2, 'sefeps',        NULL, NULL, 7070, NULL, NULL, NULL);

-- RTUID, CHANNO, HOST, PORT, UNITID
INSERT INTO T010_CHANNEL VALUES (1, 1, '127.0.0.1', 15021, 1);
INSERT INTO T010_CHANNEL VALUES (1, 2, '127.0.0.3', 15021, 1);
INSERT INTO T010_CHANNEL VALUES (2, 1, '127.0.0.1', 15022, 1);
INSERT INTO T010_CHANNEL VALUES (2, 2, '127.0.0.3', 15022, 1);

-- PNTID, RTUID, KIND, NAME, AREA, ADDRESS, DATATYPE, BYTEORDER, WORDORDER, BITINDEX, SCALE, OFFSET, DEADBAND, CTLMODE
INSERT INTO T011_POINT VALUES (101, 1, 'AI',  'Busbar voltage kV',    'hr', 0,   'float32', 'big', 'big',    NULL, NULL, NULL, 0.05, NULL);
INSERT INTO T011_POINT VALUES (102, 1, 'AI',  'Feeder 1 current A',   'ir', 0,   'int16',   NULL,  NULL,     NULL, 0.1,  NULL, 0.5, NULL);
INSERT INTO T011_POINT VALUES (103, 1, 'AI',  'Transformer temp C',   'ir', 1,   'uint16',  NULL,  NULL,     NULL, 0.1,  -40,  NULL, NULL);
INSERT INTO T011_POINT VALUES (104, 1, 'AI',  'Active power MW',      'hr', 2,   'float32', 'big', 'little', NULL, NULL, NULL, NULL, NULL);
INSERT INTO T011_POINT VALUES (105, 1, 'DI',  'Breaker Q1 closed',    'di', 0,   'bool',    NULL,  NULL,     NULL, NULL, NULL, NULL, NULL);
INSERT INTO T011_POINT VALUES (106, 1, 'DI',  'Breaker Q2 closed',    'di', 1,   'bool',    NULL,  NULL,     NULL, NULL, NULL, NULL, NULL);
INSERT INTO T011_POINT VALUES (107, 1, 'DI',  'Protection trip',      'ir', 10,  'bool',    NULL,  NULL,     3,    NULL, NULL, NULL, NULL);
INSERT INTO T011_POINT VALUES (108, 1, 'ACC', 'Energy import kWh',    'ir', 20,  'uint32',  NULL,  NULL,     NULL, NULL, NULL, NULL, NULL);
INSERT INTO T011_POINT VALUES (109, 1, 'DO',  'Breaker Q1 command',   'co', 100, 'bool',    NULL,  NULL,     NULL, NULL, NULL, NULL, NULL);
INSERT INTO T011_POINT VALUES (110, 1, 'AO',  'Tap changer setpoint', 'hr', 100, 'int16',   NULL,  NULL,     NULL, NULL, NULL, NULL, NULL);
INSERT INTO T011_POINT VALUES (201, 2, 'AI',  'Tank level m',         'ir', 0,   'uint16',  NULL,  NULL,     NULL, 0.01, NULL, 0.02, NULL);
INSERT INTO T011_POINT VALUES (202, 2, 'AI',  'Flow m3/h',            'hr', 0,   'float32', 'little', 'little', NULL, NULL, NULL, 0.1, NULL);
INSERT INTO T011_POINT VALUES (203, 2, 'DI',  'Pump 1 running',       'co', 0,   'bool',    NULL,  NULL,     NULL, NULL, NULL, NULL, NULL);
INSERT INTO T011_POINT VALUES (204, 2, 'DI',  'Pump 2 running',       'co', 1,   'bool',    NULL,  NULL,     NULL, NULL, NULL, NULL, NULL);
INSERT INTO T011_POINT VALUES (205, 2, 'ACC', 'Pumped volume m3',     'hr', 10,  'int32',   NULL,  NULL,     NULL, NULL, NULL, NULL, NULL);
INSERT INTO T011_POINT VALUES (206, 2, 'DO',  'Pump 1 start/stop',    'co', 10,  'bool',    NULL,  NULL,     NULL, NULL, NULL, NULL, NULL);
INSERT INTO T011_POINT VALUES (207, 2, 'AO',  'Level setpoint cm',    'hr', 50,  'uint16',  NULL,  NULL,     NULL, NULL, NULL, NULL, NULL);

-- VPID, RTUID, NAME
INSERT INTO T036_VTPNT VALUES (901, 1, 'Substation North link');
INSERT INTO T036_VTPNT VALUES (902, 2, 'Pump Station 7 link');

-- se104s (RTU 10): ZFID, RTUID, SRCID, ADDR (IOA), TYPE, COEF
INSERT INTO T005_ZFAI VALUES (1, 10, 101, 1001, 'M_ME_NC_1', NULL);
INSERT INTO T005_ZFAI VALUES (2, 10, 102, 1002, 'M_ME_TF_1', NULL);
INSERT INTO T005_ZFAI VALUES (3, 10, 103, 1003, 'M_ME_NB_1', 10);
INSERT INTO T005_ZFAI VALUES (4, 10, 201, 1004, 'M_ME_NA_1', 0.1);
INSERT INTO T006_ZFDI VALUES (1, 10, 105, 1, 'M_SP_TB_1', NULL);
INSERT INTO T006_ZFDI VALUES (2, 10, 106, 2, 'M_SP_NA_1', NULL);
INSERT INTO T006_ZFDI VALUES (3, 10, 107, 3, 'M_DP_NA_1', NULL);
INSERT INTO T006_ZFDI VALUES (4, 10, 901, 4, 'M_SP_TB_1', NULL);
INSERT INTO T006_ZFDI VALUES (5, 10, 902, 5, 'M_SP_TB_1', NULL);
INSERT INTO T007_ZFACC VALUES (1, 10, 108, 3001, 'M_IT_TB_1', NULL);
INSERT INTO T008_ZFDO VALUES (1, 10, 109, 5001, 'C_SC_NA_1', NULL);
INSERT INTO T009_ZFAO VALUES (1, 10, 110, 6001, 'C_SE_NB_1', NULL);

-- modbus_trains (RTU 11): ADDR is the 0-based address in the area of the table
-- (ZFAI/ZFACC input registers, ZFDI discrete inputs, ZFDO coils, ZFAO holding registers); TYPE the data type.
INSERT INTO T005_ZFAI VALUES (11, 11, 201, 0, 'float32', NULL);
INSERT INTO T005_ZFAI VALUES (12, 11, 202, 2, 'float32', NULL);
INSERT INTO T006_ZFDI VALUES (11, 11, 203, 0, 'bool', NULL);
INSERT INTO T006_ZFDI VALUES (12, 11, 204, 1, 'bool', NULL);
INSERT INTO T006_ZFDI VALUES (13, 11, 902, 2, 'bool', NULL);
INSERT INTO T007_ZFACC VALUES (11, 11, 205, 10, 'uint32', NULL);
INSERT INTO T008_ZFDO VALUES (11, 11, 206, 0, 'bool', NULL);
INSERT INTO T009_ZFAO VALUES (11, 11, 207, 0, 'uint16', NULL);

-- sefeps (RTU 12): ADDR is the point index of the sefeps protocol (docs/sefeps.md)
INSERT INTO T005_ZFAI VALUES (21, 12, 101, 1, NULL, NULL);
INSERT INTO T005_ZFAI VALUES (22, 12, 202, 2, NULL, NULL);
INSERT INTO T006_ZFDI VALUES (21, 12, 105, 10, NULL, NULL);
INSERT INTO T006_ZFDI VALUES (22, 12, 901, 11, NULL, NULL);
INSERT INTO T006_ZFDI VALUES (23, 12, 902, 12, NULL, NULL);
INSERT INTO T007_ZFACC VALUES (21, 12, 108, 20, NULL, NULL);
INSERT INTO T008_ZFDO VALUES (21, 12, 109, 30, NULL, NULL);
INSERT INTO T009_ZFAO VALUES (21, 12, 207, 40, NULL, NULL);

-- IEC 104 acquisition RTU (RTU 3): the acquirer is the controlling station of an RTU that listens on port
-- 2414 of 127.0.0.1 (channel 1) and 127.0.0.3 (channel 2), common address 3 (T010_CHANNEL.UNITID).
-- POLLMS is its general interrogation period (NULL: [iec104] gi_period_s), TIMEOUTMS its t1 (NULL: [iec104]
-- t1_s). Points: ADDRESS is the IOA, DATATYPE the ASDU type the RTU sends (or, for DO/AO, the command sent),
-- CTLMODE direct or sbo (select before operate). Forwarded by se104s (RTU 10) below.
INSERT INTO T004_RTU VALUES (3, 'Substation South', 0, 'iec104', 60000, NULL, NULL, NULL, NULL, NULL);
INSERT INTO T010_CHANNEL VALUES (3, 1, '127.0.0.1', 2414, 3);
INSERT INTO T010_CHANNEL VALUES (3, 2, '127.0.0.3', 2414, 3);
INSERT INTO T011_POINT (PNTID, RTUID, KIND, NAME, ADDRESS, DATATYPE, SCALE, DEADBAND, CTLMODE) VALUES
    (301, 3, 'DI',  'Breaker Q3 closed',     100,  'M_SP_TB_1', NULL, NULL, NULL),
    (302, 3, 'DI',  'Isolator Q31 closed',   101,  'M_DP_TB_1', NULL, NULL, NULL),
    (303, 3, 'AI',  'Line voltage kV',       200,  'M_ME_TF_1', NULL, 0.05, NULL),
    (304, 3, 'AI',  'Line current A',        201,  'M_ME_NB_1', 0.1,  NULL, NULL),
    (305, 3, 'ACC', 'Energy export kWh',     300,  'M_IT_TB_1', NULL, NULL, NULL),
    (306, 3, 'DO',  'Breaker Q3 command',    1000, 'C_SC_NA_1', NULL, NULL, 'sbo'),
    (307, 3, 'AO',  'Voltage setpoint kV',   1100, 'C_SE_NC_1', NULL, NULL, 'direct');
INSERT INTO T036_VTPNT VALUES (903, 3, 'Substation South link');
INSERT INTO T005_ZFAI VALUES (5, 10, 303, 1005, 'M_ME_TF_1', NULL);
INSERT INTO T006_ZFDI VALUES (6, 10, 301, 6, 'M_SP_TB_1', NULL);
INSERT INTO T006_ZFDI VALUES (7, 10, 302, 7, 'M_DP_TB_1', NULL);
INSERT INTO T006_ZFDI VALUES (8, 10, 903, 8, 'M_SP_TB_1', NULL);
INSERT INTO T007_ZFACC VALUES (2, 10, 305, 3002, 'M_IT_TB_1', NULL);
INSERT INTO T008_ZFDO VALUES (2, 10, 306, 5002, 'C_SC_NA_1', NULL);
INSERT INTO T009_ZFAO VALUES (2, 10, 307, 6002, 'C_SE_NC_1', NULL);
