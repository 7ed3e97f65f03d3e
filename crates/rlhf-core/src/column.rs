//! How a field's Rust type maps to one Arrow column: its data type, whether it may be
//! null, how values become an array and how an array becomes values again. The artifact
//! declarations in `records` are built from this, so each column is written once.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float32Array, ListArray, PrimitiveArray, RecordBatch, StringArray,
    StructArray,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Field, Float32Type, Float64Type, Int32Type, Int64Type, UInt64Type,
};

use crate::error::{CoreError, Result};
use crate::records::Message;
use crate::schema::{float_list, message_fields, messages_type, token_list, Column};

/// A Rust type that one Arrow column holds.
pub trait ColumnType: Sized {
    /// Whether the column may hold nulls (the `Option` types).
    const NULLABLE: bool;
    /// The Arrow type of the column.
    fn data_type() -> DataType;
    /// The column holding these values, in order.
    fn build<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef
    where
        Self: 'a;
    /// The column `name` of a batch; a missing or null required value is an error naming
    /// the file, the row and the column.
    fn read(columns: &Columns, name: &str) -> Result<Vec<Self>>;
}

/// The description of column `name` holding `T`.
pub fn column<T: ColumnType>(name: &'static str, doc: &'static str) -> Column {
    Column {
        name,
        data_type: T::data_type(),
        nullable: T::NULLABLE,
        doc,
    }
}

macro_rules! primitive_column {
    ($($native:ty => $arrow:ty, $dt:expr;)*) => {$(
        impl ColumnType for $native {
            const NULLABLE: bool = false;
            fn data_type() -> DataType {
                $dt
            }
            fn build<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
                Arc::new(PrimitiveArray::<$arrow>::from_iter_values(values.copied()))
            }
            fn read(columns: &Columns, name: &str) -> Result<Vec<Self>> {
                columns.required_values(name, |a, i| a.as_primitive::<$arrow>().value(i))
            }
        }
    )*};
}

primitive_column! {
    f32 => Float32Type, DataType::Float32;
    f64 => Float64Type, DataType::Float64;
    i32 => Int32Type, DataType::Int32;
    i64 => Int64Type, DataType::Int64;
    u64 => UInt64Type, DataType::UInt64;
}

impl ColumnType for Option<f32> {
    const NULLABLE: bool = true;
    fn data_type() -> DataType {
        DataType::Float32
    }
    fn build<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
        Arc::new(values.copied().collect::<Float32Array>())
    }
    fn read(columns: &Columns, name: &str) -> Result<Vec<Self>> {
        Ok(columns.nullable(name, |a, i| a.as_primitive::<Float32Type>().value(i)))
    }
}

impl ColumnType for String {
    const NULLABLE: bool = false;
    fn data_type() -> DataType {
        DataType::Utf8
    }
    fn build<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
        strs(values.map(String::as_str))
    }
    fn read(columns: &Columns, name: &str) -> Result<Vec<Self>> {
        columns.str(name)
    }
}

impl ColumnType for Option<String> {
    const NULLABLE: bool = true;
    fn data_type() -> DataType {
        DataType::Utf8
    }
    fn build<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
        opt_strs(values.map(Option::as_deref))
    }
    fn read(columns: &Columns, name: &str) -> Result<Vec<Self>> {
        Ok(columns.opt_str(name))
    }
}

macro_rules! list_column {
    ($($native:ty => $arrow:ty, $dt:ident;)*) => {$(
        impl ColumnType for Vec<$native> {
            const NULLABLE: bool = false;
            fn data_type() -> DataType {
                $dt()
            }
            fn build<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
                lists::<$arrow>(values.map(Some))
            }
            fn read(columns: &Columns, name: &str) -> Result<Vec<Self>> {
                columns.required_values(name, list_at::<$arrow>)
            }
        }

        impl ColumnType for Option<Vec<$native>> {
            const NULLABLE: bool = true;
            fn data_type() -> DataType {
                $dt()
            }
            fn build<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
                lists::<$arrow>(values.map(Option::as_ref))
            }
            fn read(columns: &Columns, name: &str) -> Result<Vec<Self>> {
                Ok(columns.nullable(name, list_at::<$arrow>))
            }
        }
    )*};
}

list_column! {
    i32 => Int32Type, token_list;
    f32 => Float32Type, float_list;
}

impl ColumnType for Option<Vec<Message>> {
    const NULLABLE: bool = true;
    fn data_type() -> DataType {
        messages_type()
    }
    fn build<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
        messages(values.map(Option::as_ref))
    }
    fn read(columns: &Columns, name: &str) -> Result<Vec<Self>> {
        Ok(columns.nullable(name, messages_at))
    }
}

// ---------------------------------------------------------------------------------------
// Column builders

fn strs<'a>(it: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(it))
}

fn opt_strs<'a>(it: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(it.collect::<StringArray>())
}

fn lists<'a, T: ArrowPrimitiveType>(
    it: impl Iterator<Item = Option<&'a Vec<T::Native>>>,
) -> ArrayRef {
    Arc::new(ListArray::from_iter_primitive::<T, _, _>(it.map(|o| {
        o.map(|v| v.iter().map(|&x| Some(x)).collect::<Vec<_>>())
    })))
}

fn messages<'a>(it: impl Iterator<Item = Option<&'a Vec<Message>>>) -> ArrayRef {
    let mut offsets = vec![0i32];
    let mut roles = Vec::new();
    let mut contents = Vec::new();
    let mut valid = Vec::new();
    for m in it {
        if let Some(list) = m {
            for msg in list {
                roles.push(msg.role.as_str());
                contents.push(msg.content.as_str());
            }
        }
        valid.push(m.is_some());
        offsets.push(roles.len() as i32);
    }
    let values = StructArray::new(
        message_fields(),
        vec![strs(roles.into_iter()), strs(contents.into_iter())],
        None,
    );
    let field = Arc::new(Field::new("item", DataType::Struct(message_fields()), true));
    Arc::new(ListArray::new(
        field,
        OffsetBuffer::new(offsets.into()),
        Arc::new(values),
        Some(valid.into()),
    ))
}

// ---------------------------------------------------------------------------------------
// Column readers

/// Typed access to the columns of one batch, with errors naming file, row and column.
pub struct Columns<'a> {
    batch: &'a RecordBatch,
    path: &'a Path,
}

impl<'a> Columns<'a> {
    /// Wraps a batch read from `path`.
    pub fn new(batch: &'a RecordBatch, path: &'a Path) -> Self {
        Columns { batch, path }
    }

    pub(crate) fn bad(&self, row: Option<usize>, message: String) -> CoreError {
        CoreError::BadInput {
            path: self.path.to_path_buf(),
            row,
            message,
        }
    }

    fn column(&self, name: &str) -> Option<&'a ArrayRef> {
        self.batch.column_by_name(name)
    }

    fn required(&self, name: &str) -> Result<&'a ArrayRef> {
        self.column(name)
            .ok_or_else(|| self.bad(None, format!("column `{name}` is missing")))
    }

    fn null_error(&self, name: &str, row: usize) -> CoreError {
        self.bad(Some(row), format!("column `{name}` is null"))
    }

    /// The values of column `name`, None where null; a column absent from the file is all
    /// null. `value(array, i)` reads row i of a non-null entry.
    pub(crate) fn nullable<T>(
        &self,
        name: &str,
        value: impl Fn(&ArrayRef, usize) -> T,
    ) -> Vec<Option<T>> {
        match self.column(name) {
            None => (0..self.batch.num_rows()).map(|_| None).collect(),
            Some(a) => (0..a.len())
                .map(|i| (!a.is_null(i)).then(|| value(a, i)))
                .collect(),
        }
    }

    /// The values of column `name`; a missing column or a null is an error naming it.
    pub(crate) fn required_values<T>(
        &self,
        name: &str,
        value: impl Fn(&ArrayRef, usize) -> T,
    ) -> Result<Vec<T>> {
        self.required(name)?;
        self.nullable(name, value)
            .into_iter()
            .enumerate()
            .map(|(i, v)| v.ok_or_else(|| self.null_error(name, i)))
            .collect()
    }

    /// A required string column.
    pub fn str(&self, name: &str) -> Result<Vec<String>> {
        self.required_values(name, string_at)
    }

    /// A nullable string column (absent = all null).
    pub fn opt_str(&self, name: &str) -> Vec<Option<String>> {
        self.nullable(name, string_at)
    }
}

fn string_at(a: &ArrayRef, i: usize) -> String {
    a.as_string::<i32>().value(i).to_string()
}

fn list_at<T: ArrowPrimitiveType>(a: &ArrayRef, i: usize) -> Vec<T::Native> {
    a.as_list::<i32>()
        .value(i)
        .as_primitive::<T>()
        .values()
        .to_vec()
}

fn messages_at(a: &ArrayRef, i: usize) -> Vec<Message> {
    let v = a.as_list::<i32>().value(i);
    let s = v.as_struct();
    let roles = s.column(0).as_string::<i32>();
    let contents = s.column(1).as_string::<i32>();
    (0..s.len())
        .map(|j| Message::new(roles.value(j), contents.value(j)))
        .collect()
}
